"""Getting character files: ``civitai:VERSION_ID`` and ``hf:OWNER/REPO/PATH/FILE``.

Every download is verified against the sha256 the source publishes (civitai ``hashes.SHA256``; the hub's
LFS ETag, or the git blob id for small files); on a mismatch the file is deleted and ``FetchError`` raised.
A character TOML is written beside the model.

The civitai API key comes from ``CIVITAI_API_KEY`` and is sent as an ``Authorization`` header only to the
civitai host (dropped when a download redirects elsewhere, e.g. to a CDN). It is never written to files,
logs or error messages. ``CIVITAI_BASE_URL`` points the client at another server (tests use a local one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from expressiongrid.errors import FetchError

DEFAULT_CIVITAI = "https://civitai.com"
USER_AGENT = "expressiongrid (character fetch)"

# civitai "baseModel" values -> our family names (others are reported but not refused).
CIVITAI_FAMILIES = {
    "SD 1.4": "sd15", "SD 1.5": "sd15", "SD 1.5 LCM": "sd15", "SD 1.5 Hyper": "sd15",
    "SD 2.0": "sd2", "SD 2.0 768": "sd2", "SD 2.1": "sd2", "SD 2.1 768": "sd2", "SD 2.1 Unclip": "sd2",
    "SDXL 0.9": "sdxl", "SDXL 1.0": "sdxl", "SDXL 1.0 LCM": "sdxl", "SDXL Turbo": "sdxl", "SDXL Lightning": "sdxl",
    "SDXL Hyper": "sdxl", "Pony": "sdxl", "Illustrious": "sdxl", "NoobAI": "sdxl",
}
LORA_TYPES = {"LORA", "LoCon", "LyCORIS", "DoRA"}
EMBEDDING_TYPES = {"TextualInversion"}


@dataclass
class FetchResult:
    """What a fetch produced: the model file, the character file beside it and the verified sha256."""

    model_path: Path
    character_path: Path
    sha256: str
    kind: str  # "lora" or "embedding"


def parse_spec(spec: str) -> tuple[str, ...]:
    """``civitai:123`` -> ``("civitai", "123")``; ``hf:owner/repo/dir/file`` -> ``("hf", "owner/repo", "dir/file")``."""
    scheme, _, rest = spec.partition(":")
    if scheme == "civitai" and rest.isdigit():
        return ("civitai", rest)
    if scheme == "hf":
        parts = rest.split("/")
        if len(parts) >= 3 and all(parts) and not any(p in (".", "..") for p in parts):  # stay inside --dir
            return ("hf", "/".join(parts[:2]), "/".join(parts[2:]))
    raise FetchError(
        f"cannot read {spec!r}: use civitai:VERSION_ID (the number after modelVersionId= in a civitai URL) "
        "or hf:OWNER/REPO/FILE"
    )


class _SecretScrubber:
    """Replaces the API key in any text that might reach a user."""

    def __init__(self, secret: str | None):
        self.secret = secret or None

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


class _DropAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """Keep the Authorization header only while redirects stay on the same host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            for name in list(new.headers):
                if name.lower() == "authorization":
                    del new.headers[name]
            new.unredirected_hdrs.pop("Authorization", None)
        return new


def _open(url: str, api_key: str | None, scrub, timeout: float = 60):
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    opener = urllib.request.build_opener(_DropAuthOnRedirect())
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        hint = ""
        if exc.code in (401, 403):
            hint = ("; this file needs a civitai API key: set CIVITAI_API_KEY" if not api_key
                    else "; the API key in CIVITAI_API_KEY was refused")
        raise FetchError(scrub(f"GET {_public(url)} failed: HTTP {exc.code} {exc.reason}{hint}")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(scrub(f"GET {_public(url)} failed: {reason}; check the network or the server address")) from None


def _public(url: str) -> str:
    """The URL without its query string (signed URLs and tokens stay out of messages)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _safe_name(name: str) -> str:
    name = Path(str(name).replace("\\", "/")).name  # never let a server choose a path outside the folder
    if not name or name in (".", ".."):
        raise FetchError(f"the server gave an unusable file name {name!r}")
    return name


def _download(url: str, dest: Path, expected_sha256: str | None, api_key: str | None, scrub) -> str:
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with _open(url, api_key, scrub) as response, part.open("wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                fh.write(block)
    except FetchError:
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise FetchError(scrub(f"download of {dest.name} failed: {exc}")) from None
    actual = digest.hexdigest()
    if expected_sha256 and actual.lower() != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise FetchError(
            f"{dest.name}: sha256 {actual} does not match the published {expected_sha256.lower()}; "
            "the download was corrupted or the file changed: deleted, try again"
        )
    os.replace(part, dest)
    return actual


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def write_character_file(model_path: Path, kind: str, label: str, text: str, source: dict,
                         token: str | None = None) -> Path:
    """Write ``<model stem>.toml`` beside the model (see docs/characters.md for the format)."""
    lines = [
        "# Written by `expressiongrid characters fetch`; edit label, text and weight freely.",
        f"label = {_toml_str(label)}",
        f"text = {_toml_str(text)}",
        "",
    ]
    if kind == "lora":
        lines += ["[[lora]]", f"file = {_toml_str(model_path.name)}", "weight = 1.0", ""]
    else:
        lines += ["[[embedding]]", f"file = {_toml_str(model_path.name)}", f"token = {_toml_str(token or '')}", ""]
    lines.append("[source]")
    for key, value in source.items():
        if value is None:
            continue
        lines.append(f"{key} = {value if isinstance(value, int) else _toml_str(str(value))}")
    path = model_path.with_suffix(".toml")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fetch_civitai(version_id: str | int, dest_dir: str | Path, *, family: str = "sd15", force: bool = False,
                  api_key: str | None = None, base_url: str | None = None) -> FetchResult:
    """Download a civitai model version's primary file into ``dest_dir`` and write its character file."""
    from expressiongrid.characters.tokens import default_token

    api_key = api_key if api_key is not None else os.environ.get("CIVITAI_API_KEY") or None
    base = (base_url or os.environ.get("CIVITAI_BASE_URL") or DEFAULT_CIVITAI).rstrip("/")
    scrub = _SecretScrubber(api_key)
    with _open(f"{base}/api/v1/model-versions/{int(version_id)}", api_key, scrub) as response:
        try:
            info = json.loads(response.read().decode("utf-8"))
        except ValueError:
            raise FetchError(f"civitai answered for version {version_id} with something that is not JSON") from None
    files = info.get("files") or []
    chosen = next((f for f in files if f.get("primary")), None) or next(
        (f for f in files if f.get("type") == "Model"), None) or (files[0] if files else None)
    if not chosen or not chosen.get("downloadUrl"):
        raise FetchError(f"civitai model version {version_id} lists no downloadable file")
    model = info.get("model") or {}
    model_type = model.get("type", "")
    if model_type in LORA_TYPES:
        kind = "lora"
    elif model_type in EMBEDDING_TYPES:
        kind = "embedding"
    else:
        raise FetchError(f"civitai model version {version_id} is a {model_type or 'model of unknown type'}, "
                         "not a LoRA or an embedding")
    base_model = info.get("baseModel") or ""
    their_family = CIVITAI_FAMILIES.get(base_model)
    if their_family and their_family != family and not force:
        raise FetchError(
            f"civitai model version {version_id} ({model.get('name', '?')}) is for {base_model}, not {family}; "
            "pass --force to download it anyway"
        )
    expected = ((chosen.get("hashes") or {}).get("SHA256") or "").strip()
    if not expected:
        raise FetchError(f"civitai publishes no SHA256 for {chosen.get('name')}; refusing an unverifiable download")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    model_path = dest_dir / _safe_name(chosen.get("name") or f"civitai_{version_id}.safetensors")
    digest = _download(chosen["downloadUrl"], model_path, expected, api_key, scrub)
    words = [w.strip() for w in info.get("trainedWords") or [] if isinstance(w, str) and w.strip()]
    label = " ".join(x for x in (model.get("name"), info.get("name")) if x) or model_path.stem
    source = {"civitai": int(version_id), "model": model.get("name"), "version": info.get("name"),
              "sha256": digest}
    if kind == "lora":
        text = ", ".join([f"<lora:{model_path.stem}:1>"] + words)
        token = None
    else:
        token = default_token(model_path.stem)
        text = token
    char_path = write_character_file(model_path, kind, label, text, source, token)
    return FetchResult(model_path, char_path, digest, kind)


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HTTP_CLIENT_MODULES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


def fetch_hf(repo_id: str, filename: str, dest_dir: str | Path, *, revision: str | None = None) -> FetchResult:
    """Download ``filename`` from the hub repo through ``huggingface_hub`` into ``dest_dir`` and verify it
    against the hub's published hash (sha256 for LFS files, git blob id otherwise)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from expressiongrid.characters.files import identify
    from expressiongrid.characters.tokens import default_token
    from expressiongrid.errors import CharacterError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint))
        local = Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=str(dest_dir), endpoint=endpoint))
    except LocalEntryNotFoundError as exc:
        raise FetchError(f"hf:{repo_id}/{filename}: not reachable ({exc.__class__.__name__}); "
                         "is HF_HUB_OFFLINE set or the network down?") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise FetchError(f"hf:{repo_id}/{filename}: the hub answered HTTP {status}; check the repo and file name") from None
    except OSError as exc:
        raise FetchError(f"hf:{repo_id}/{filename}: download failed: {exc}") from None
    except Exception as exc:
        # huggingface_hub's HTTP client (httpx) raises its own types for a DNS failure, a refused or
        # reset connection: not OSError subclasses, and not bugs of ours.
        if type(exc).__module__.split(".")[0] not in _HTTP_CLIENT_MODULES:
            raise
        raise FetchError(f"hf:{repo_id}/{filename}: cannot reach the hub ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}); check the network") from None
    etag = (meta.etag or "").strip('"').lower()
    from expressiongrid.characters import hashes

    digest = hashes.sha256(local)
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        ok = digest == etag
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        ok = _git_blob_sha1(local) == etag
    else:
        local.unlink(missing_ok=True)
        raise FetchError(f"hf:{repo_id}/{filename}: the hub published no usable hash (ETag {etag!r}); refusing it")
    if not ok:
        local.unlink(missing_ok=True)
        raise FetchError(f"hf:{repo_id}/{filename}: the downloaded file does not match the hub's hash {etag}; deleted, try again")
    try:
        kind, metadata = identify(local)
    except CharacterError as exc:
        raise FetchError(f"hf:{repo_id}/{filename}: downloaded, but {exc}") from None
    source = {"hf": f"{repo_id}/{filename}", "revision": meta.commit_hash, "sha256": digest}
    if kind == "lora":
        from expressiongrid.characters.files import kohya_trigger_words

        text = ", ".join([f"<lora:{local.stem}:1>"] + kohya_trigger_words(metadata))
        token = None
    else:
        token = default_token(local.stem)
        text = token
    char_path = write_character_file(local, kind, local.stem, text, source, token)
    return FetchResult(local, char_path, digest, kind)


def fetch(spec: str, dest_dir: str | Path, *, family: str = "sd15", force: bool = False) -> FetchResult:
    """Fetch ``civitai:VERSION_ID`` or ``hf:OWNER/REPO/FILE`` into ``dest_dir``."""
    parsed = parse_spec(spec)
    if parsed[0] == "civitai":
        return fetch_civitai(parsed[1], dest_dir, family=family, force=force)
    return fetch_hf(parsed[1], parsed[2], dest_dir)
