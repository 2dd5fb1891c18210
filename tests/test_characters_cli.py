"""`expressiongrid characters inspect | list | fetch` through click, with local servers playing civitai and the hub."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from expressiongrid.characters import demo, load_character
from expressiongrid.cli import main

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SECRET = "sk-test-5ecret-key-0123456789"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRESSIONGRID_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pipe():
    from expressiongrid.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def lora_file(pipe, tmp_path_factory):
    return demo.save_kohya_lora(pipe, tmp_path_factory.mktemp("m") / "anna.safetensors", varied_alphas=True)


@pytest.fixture(scope="module")
def emb_file(pipe, tmp_path_factory):
    return demo.save_a1111_embedding(tmp_path_factory.mktemp("e") / "Bella.pt", demo.embedding_vectors(pipe, 3))


def run(*args, **env):
    result = CliRunner().invoke(main, list(args), env=env or None)
    return result


def test_inspect_lora_json(lora_file):
    result = run("characters", "inspect", str(lora_file), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["kind"], info["format"], info["family"]) == ("lora", "kohya", "sd15")
    assert info["alphas_vary"] is True and info["rank"] == 4
    assert info["modules"]["unet"] > 0 and info["modules"]["text_encoder"] == 24 and info["modules"]["conv"] > 0
    assert info["hashes"]["autov2"] == hashlib.sha256(lora_file.read_bytes()).hexdigest()[:10]
    training = info["training"]
    assert training["base_model"] == "sd_v1" and training["resolution"] == "(512, 512)"
    assert training["expression_tags"] == {"smile": 7, "open mouth": 3}
    assert "crying" in training["expression_tags_absent"]


def test_inspect_text_output(lora_file, emb_file):
    result = run("characters", "inspect", str(lora_file))
    assert result.exit_code == 0
    assert "alphas vary per module" in result.output and "SD 1.5" in result.output
    assert "expression tags:  smile (7), open mouth (3)" in result.output
    result = run("characters", "inspect", str(emb_file))
    assert result.exit_code == 0 and "vectors:  3 x 32" in result.output and "ti_short_hash" in result.output


def test_inspect_errors_are_one_line(tmp_path, pipe):
    result = run("characters", "inspect", str(tmp_path / "nope.safetensors"))
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "file not found" in result.output
    sdxl = demo.save_sdxl_lora(tmp_path / "xl.safetensors")
    info = json.loads(run("characters", "inspect", str(sdxl), "--json").output)
    assert info["family"] == "sdxl"


def test_list_command(tmp_path, lora_file, emb_file):
    (tmp_path / "anna.safetensors").write_bytes(lora_file.read_bytes())
    (tmp_path / "bella.pt").write_bytes(emb_file.read_bytes())
    (tmp_path / "hero.toml").write_text('label = "Hero"\nlora = "anna.safetensors"\n')
    result = run("characters", "list", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("bella.pt") and "embedding" in line and "bella" in line for line in lines)
    assert any(line.startswith("hero.toml") and "character" in line and "Hero" in line for line in lines)
    assert not any(line.startswith("anna.safetensors") for line in lines)  # shown under hero.toml
    assert run("characters", "list", str(tmp_path / "missing")).exit_code != 0


# --- civitai ------------------------------------------------------------------------------------------------

class _Server:
    """A local HTTP server; ``routes`` maps a path to (status, headers, body); requests are recorded."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                outer.requests.append((self.path, dict(self.headers)))
                status, headers, data = outer.routes.get(self.path.split("?")[0], (404, {}, b"not found"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _version(server, vid: int, content: bytes, *, name="anna.safetensors", sha=None, kind="LORA",
             base="SD 1.5", words=("annachar", "red hair"), cdn=None):
    """Play civitai: the version JSON, a download URL that redirects, and the file behind it."""
    download = f"/api/download/models/{vid}"
    cdn_base = cdn or server.url
    info = {
        "id": vid, "name": "v2", "baseModel": base, "trainedWords": list(words),
        "model": {"name": "Anna", "type": kind},
        "files": [
            {"name": "training_data.zip", "type": "Training Data", "primary": False,
             "downloadUrl": server.url + "/nope", "hashes": {"SHA256": "00"}},
            {"name": name, "type": "Model", "primary": True, "downloadUrl": server.url + download,
             "hashes": {"SHA256": (sha or hashlib.sha256(content).hexdigest()).upper()}},
        ],
    }
    server.routes[f"/api/v1/model-versions/{vid}"] = (200, {"Content-Type": "application/json"}, json.dumps(info).encode())
    server.routes[download] = (302, {"Location": f"{cdn_base}/cdn/{vid}/{name}?signature=abc"}, b"")
    server.routes[f"/cdn/{vid}/{name}"] = (200, {}, content)


def _no_secret_anywhere(folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"API key written to {path}"
    for text in texts:
        assert SECRET not in text


def test_fetch_civitai_lora_writes_model_and_character_file(server, tmp_path, lora_file):
    content = lora_file.read_bytes()
    _version(server, 101, content)
    dest = tmp_path / "characters"
    result = run("characters", "fetch", "civitai:101", "--dir", str(dest),
                 CIVITAI_BASE_URL=server.url, CIVITAI_API_KEY=SECRET)
    assert result.exit_code == 0, result.output
    model = dest / "anna.safetensors"
    assert model.read_bytes() == content and not list(dest.glob("*.part"))
    ch = load_character(dest / "anna.toml")
    assert ch.label == "Anna v2" and ch.kind == "lora" and ch.loras[0].path == model
    assert ch.text == "<lora:anna:1>, annachar, red hair"
    assert ch.source["civitai"] == 101 and ch.source["sha256"] == hashlib.sha256(content).hexdigest()
    # the key went to the API as a header, in no file and no output
    api_headers = next(h for p, h in server.requests if p.startswith("/api/v1/model-versions/101"))
    assert api_headers.get("Authorization") == f"Bearer {SECRET}"
    _no_secret_anywhere(tmp_path, result.output)


def test_fetch_civitai_drops_the_key_when_redirected_to_another_host(server, tmp_path, lora_file):
    cdn = _Server()
    try:
        content = lora_file.read_bytes()
        _version(server, 102, content, cdn=cdn.url.replace("127.0.0.1", "localhost"))
        cdn.routes["/cdn/102/anna.safetensors"] = (200, {}, content)
        result = run("characters", "fetch", "civitai:102", "--dir", str(tmp_path / "c"),
                     CIVITAI_BASE_URL=server.url, CIVITAI_API_KEY=SECRET)
        assert result.exit_code == 0, result.output
        (path, headers), = cdn.requests
        assert path.startswith("/cdn/102/") and "Authorization" not in headers
        same_host = [h for p, h in server.requests if p.startswith("/api/download/models/102")]
        assert same_host and same_host[0].get("Authorization") == f"Bearer {SECRET}"
    finally:
        cdn.close()


def test_fetch_civitai_sha256_mismatch_deletes_the_file(server, tmp_path, lora_file):
    _version(server, 103, lora_file.read_bytes(), sha="ab" * 32)
    dest = tmp_path / "c"
    result = run("characters", "fetch", "civitai:103", "--dir", str(dest), CIVITAI_BASE_URL=server.url)
    assert result.exit_code == 1
    assert "does not match the published" in result.output and "deleted" in result.output
    assert not any(dest.iterdir())


def test_fetch_civitai_refused_key_never_appears_in_the_error(server, tmp_path):
    server.routes["/api/v1/model-versions/104"] = (401, {}, json.dumps({"error": "Unauthorized"}).encode())
    result = run("characters", "fetch", "civitai:104", "--dir", str(tmp_path / "c"),
                 CIVITAI_BASE_URL=server.url, CIVITAI_API_KEY=SECRET)
    assert result.exit_code == 1 and "HTTP 401" in result.output and "CIVITAI_API_KEY was refused" in result.output
    _no_secret_anywhere(tmp_path, result.output)
    result = run("characters", "fetch", "civitai:104", "--dir", str(tmp_path / "c"), CIVITAI_BASE_URL=server.url,
                 CIVITAI_API_KEY="")
    assert "set CIVITAI_API_KEY" in result.output


def test_fetch_civitai_other_family_needs_force(server, tmp_path, lora_file):
    _version(server, 105, lora_file.read_bytes(), base="SDXL 1.0")
    result = run("characters", "fetch", "civitai:105", "--dir", str(tmp_path / "c"), CIVITAI_BASE_URL=server.url)
    assert result.exit_code == 1 and "SDXL 1.0" in result.output and "--force" in result.output
    result = run("characters", "fetch", "civitai:105", "--dir", str(tmp_path / "c"), "--force",
                 CIVITAI_BASE_URL=server.url)
    assert result.exit_code == 0, result.output


def test_fetch_civitai_embedding(server, tmp_path, emb_file):
    _version(server, 106, emb_file.read_bytes(), name="Bella.pt", kind="TextualInversion", words=("bella",))
    dest = tmp_path / "c"
    assert run("characters", "fetch", "civitai:106", "--dir", str(dest), CIVITAI_BASE_URL=server.url).exit_code == 0
    ch = load_character(dest / "Bella.toml")
    assert ch.kind == "embedding" and ch.embeddings[0].token == "bella" and ch.text == "bella"


def test_fetch_civitai_file_name_cannot_escape_the_folder(server, tmp_path, lora_file):
    _version(server, 107, lora_file.read_bytes(), name="../../evil.safetensors")
    dest = tmp_path / "deep" / "c"
    assert run("characters", "fetch", "civitai:107", "--dir", str(dest), CIVITAI_BASE_URL=server.url).exit_code == 0
    assert (dest / "evil.safetensors").exists() and not (tmp_path / "evil.safetensors").exists()


@pytest.mark.parametrize("spec", ["civitai:abc", "hf:owner/repo", "hf:owner/repo/../../etc/x.safetensors", "x:1"])
def test_fetch_bad_spec_is_explained(spec):
    result = run("characters", "fetch", spec)
    assert result.exit_code == 1 and "civitai:VERSION_ID" in result.output and "hf:OWNER/REPO/FILE" in result.output


# --- Hugging Face hub ---------------------------------------------------------------------------------------

def _hub(server, repo: str, filename: str, content: bytes, etag: str | None = None):
    etag = etag or hashlib.sha256(content).hexdigest()
    headers = {"X-Repo-Commit": "c" * 40, "ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"',
               "X-Linked-Size": str(len(content))}
    server.routes[f"/{repo}/resolve/main/{filename}"] = (200, headers, content)


@pytest.fixture
def hub(server, monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest keeps tests offline by default
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return server


def test_fetch_hf_downloads_verifies_and_writes_character(hub, tmp_path, lora_file):
    content = lora_file.read_bytes()
    _hub(hub, "someone/anna-lora", "loras/anna.safetensors", content)
    dest = tmp_path / "c"
    result = run("characters", "fetch", "hf:someone/anna-lora/loras/anna.safetensors", "--dir", str(dest))
    assert result.exit_code == 0, result.output
    model = dest / "loras" / "anna.safetensors"
    assert model.read_bytes() == content
    ch = load_character(model.with_suffix(".toml"))
    assert ch.kind == "lora" and ch.loras[0].path == model
    assert ch.source == {"hf": "someone/anna-lora/loras/anna.safetensors", "revision": "c" * 40,
                         "sha256": hashlib.sha256(content).hexdigest()}
    assert any(p.startswith("/someone/anna-lora/resolve/main/loras/anna.safetensors") for p, _ in hub.requests)


def test_fetch_hf_hash_mismatch_deletes_the_file(hub, tmp_path, lora_file):
    _hub(hub, "someone/bad", "anna.safetensors", lora_file.read_bytes(), etag="12" * 32)
    dest = tmp_path / "c"
    result = run("characters", "fetch", "hf:someone/bad/anna.safetensors", "--dir", str(dest))
    assert result.exit_code == 1 and "does not match the hub's hash" in result.output
    assert not (dest / "anna.safetensors").exists()


def test_fetch_hf_missing_file_is_a_one_line_error(hub, tmp_path):
    result = run("characters", "fetch", "hf:someone/none/x.safetensors", "--dir", str(tmp_path / "c"))
    assert result.exit_code == 1 and "error: hf:someone/none/x.safetensors" in result.output
    assert result.output.strip().count("\n") == 0
