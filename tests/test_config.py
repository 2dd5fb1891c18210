"""The user configuration: an A1111 install's folders, name lookups, defaults, `config show` / `config path`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from expressiongrid import config as cfg
from expressiongrid.cli import main
from expressiongrid.errors import ConfigError, UsageError


def _file(path: Path, payload: float = 0.0) -> Path:
    """A small real safetensors file; under Stable-diffusion/ it has a checkpoint's UNet key naming."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    key = "model.diffusion_model.w" if "Stable-diffusion" in str(path) else "w"
    save_file({key: np.full((4,), payload, dtype=np.float32)}, str(path))
    return path


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """A fake A1111 install (models/Stable-diffusion, models/Lora, models/VAE, embeddings) and a config naming it."""
    root = tmp_path / "stable-diffusion-webui"
    _file(root / "models/Stable-diffusion/tinyckpt-v1.safetensors", 1)
    _file(root / "models/Stable-diffusion/sub/other.safetensors", 2)
    _file(root / "models/Lora/anna_v2.safetensors", 3)
    _file(root / "models/Lora/styles/ink.safetensors", 4)
    _file(root / "embeddings/EasyNegative.safetensors", 5)
    (root / "models/VAE").mkdir(parents=True)
    _file(root / "models/VAE/kl-f8.safetensors", 6)
    extra = tmp_path / "more-loras"
    _file(extra / "bob.safetensors", 7)
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir()
    path.write_text(f'[paths]\nwebui = "{root}"\nloras = ["../more-loras"]\n'
                    '[defaults]\ndtype = "bf16"\nsampler = "DPM++ 2M Karras"\n', encoding="utf-8")
    monkeypatch.setenv("EXPRESSIONGRID_CONFIG", str(path))
    return root


def test_webui_implies_a1111_folders_and_lookups_go_by_stem(webui, tmp_path):
    c = cfg.load()
    assert c.search_folders("loras") == [webui / "models/Lora", tmp_path / "more-loras"]  # LyCORIS absent: skipped
    assert c.find_file("loras", "anna_v2") == webui / "models/Lora/anna_v2.safetensors"
    assert c.find_file("loras", "ink") == webui / "models/Lora/styles/ink.safetensors"  # subfolders, as A1111
    assert c.find_file("loras", "bob") == tmp_path / "more-loras/bob.safetensors"
    assert c.find_file("loras", "Anna_v2") is None  # A1111's LoRA names are case-sensitive
    assert c.find_file("embeddings", "easynegative") == webui / "embeddings/EasyNegative.safetensors"
    assert c.find_file("vaes", "kl-f8.safetensors") == webui / "models/VAE/kl-f8.safetensors"
    assert c.find_file("loras", "nobody") is None
    assert "searched " + str(webui / "models/Lora") in c.describe_search("loras")
    assert c.default("dtype") == "bf16" and c.default("sampler") == "DPM++ 2M Karras" and c.default("device") is None


def test_checkpoint_by_file_name_stem_path_and_a1111_title(webui):
    c = cfg.load()
    ckpt = webui / "models/Stable-diffusion/tinyckpt-v1.safetensors"
    short = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    for name in ("tinyckpt-v1", "tinyckpt-v1.safetensors", f"tinyckpt-v1.safetensors [{short}]", f"tinyckpt-v1 [{short}]"):
        assert c.find_checkpoint(name) == ckpt, name
    assert c.find_checkpoint("sub/other.safetensors") == webui / "models/Stable-diffusion/sub/other.safetensors"
    with pytest.raises(UsageError, match="another hash"):
        c.find_checkpoint("tinyckpt-v1.safetensors [0123456789]")
    assert c.find_by_hash("checkpoints", short) == ckpt


def test_two_files_with_one_name_are_refused_not_guessed(webui):
    _file(webui / "models/Lora/old/anna_v2.safetensors", 9)
    with pytest.raises(UsageError, match="names 2 loras files"):
        cfg.load().find_file("loras", "anna_v2")
    assert cfg.load().find_file("loras", "old/anna_v2") == webui / "models/Lora/old/anna_v2.safetensors"


@pytest.mark.parametrize("text, where", [
    ('[paths]\nloras = 3\n', "[paths] loras must be a folder"),
    ('[paths]\nlora = "x"\n', "unknown key [paths] lora"),
    ('[paths]\nloras = "missing-folder"\n', "[paths] loras: folder"),
    ('[paths]\nwebui = "."\n', "[paths] webui"),
    ('[defaults]\ndtype = "fp8"\n', "[defaults] dtype 'fp8'"),
    ('[defaults]\nsampler = "Euler b"\n', "[defaults] sampler: unknown sampler"),
    ('[defaults]\ndevice = "gpu"\n', "[defaults] device 'gpu'"),
    ('[default]\n', "unknown table or key 'default'"),
    ('[paths\n', "invalid TOML"),
])
def test_a_bad_configuration_is_one_line_naming_file_and_key(tmp_path, monkeypatch, text, where):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("EXPRESSIONGRID_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        cfg.load()
    assert str(path) in str(info.value) and where in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and where in result.output


def test_config_show_says_where_each_value_came_from(webui, tmp_path):
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(str(webui / "models/Lora") in line and "# [paths] webui" in line for line in lines)
    assert any(str(tmp_path / "more-loras") in line and "# [paths] loras" in line for line in lines)
    assert any(str(webui / "models/LyCORIS") in line and "not present" in line for line in lines)
    assert 'dtype = "bf16"  # [defaults] dtype' in lines
    assert 'sampler = "DPM++ 2M Karras"  # [defaults] sampler' in lines
    data = json.loads(CliRunner().invoke(main, ["config", "show", "--json"]).output)
    assert data["file_source"] == "EXPRESSIONGRID_CONFIG" and data["defaults"]["device"]["source"] == "built-in"
    path = CliRunner().invoke(main, ["config", "path"])
    assert path.output.strip() == str(tmp_path / "conf" / "config.toml")


def test_without_a_file_everything_is_built_in(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRESSIONGRID_CONFIG", str(tmp_path / "none.toml"))
    c = cfg.load()
    assert not c.exists and c.default("sampler") == "Euler a" and c.search_folders("loras") == []
    assert "no loras folder is configured" in c.describe_search("loras")
    monkeypatch.delenv("EXPRESSIONGRID_CONFIG")
    assert cfg.config_path()[1] == "user config folder" and cfg.config_path()[0].name == "config.toml"


def test_study_and_xyz_name_checkpoints_as_a1111_does_and_take_defaults(webui, tmp_path):
    from expressiongrid.study.study import study_from_dict
    from expressiongrid.study.xyz import xyz_study

    ckpt = webui / "models/Stable-diffusion/tinyckpt-v1.safetensors"
    short = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    study = study_from_dict({"model": {"source": f"tinyckpt-v1.safetensors [{short}]", "vae": "kl-f8"},
                             "prompt": {"positive": "a cat"}, "rows": {"axis": "Steps", "values": "1"},
                             "columns": {"axis": "Nothing"}}, base_dir=tmp_path, check_files=True)
    assert study.model.source == str(ckpt) and study.model.vae == str(webui / "models/VAE/kl-f8.safetensors")
    assert study.model.dtype == "bf16" and study.sampling.sampler == "DPM++ 2M Karras"  # [defaults]
    plot = xyz_study(base_dir=tmp_path, x=("Checkpoint name", "tinyckpt-v1, other"), prompt="a cat", model="tinyckpt-v1")
    assert plot.model.source == str(ckpt)
    assert [v.value for v in plot.columns.values] == [str(ckpt), str(webui / "models/Stable-diffusion/sub/other.safetensors")]
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a cat", "--x", "Steps: 1,2", "--model", "nothere",
                                       "--dry-run", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "'nothere' not found" in result.output and "searched " + str(webui / "models/Stable-diffusion") in result.output


def test_a1111_json_and_civitai_info_give_trigger_words_weight_and_link(webui, tmp_path):
    from expressiongrid.characters.files import character_from_model_file
    from expressiongrid.characters.sidecars import read_sidecars

    lora = webui / "models/Lora/anna_v2.safetensors"
    # a real LoRA is needed for a bare-file character: the tiny model's demo generator writes one
    from expressiongrid.characters.demo import save_kohya_lora
    from expressiongrid.tiny import build_tiny_pipeline

    save_kohya_lora(build_tiny_pipeline(), lora)
    (webui / "models/Lora/anna_v2.civitai.info").write_text(json.dumps(
        {"id": 445566, "modelId": 1122, "trainedWords": ["anna, blue eyes"], "baseModel": "SD 1.5"}), encoding="utf-8")
    info = read_sidecars(lora)
    assert info.trigger_words == ["anna", "blue eyes"] and info.civitai_version_id == 445566
    assert info.civitai_url == "https://civitai.com/models/1122?modelVersionId=445566"
    ch = character_from_model_file(lora)
    assert ch.text == "<lora:anna_v2:1>, anna, blue eyes" and ch.source == {"civitai": 445566}
    # A1111's own card settings win over civitai's words, as the card writes them into the prompt
    (webui / "models/Lora/anna_v2.json").write_text(json.dumps(
        {"activation text": "annaxyz", "preferred weight": 0.7, "sd version": "SD1"}), encoding="utf-8")
    ch = character_from_model_file(lora)
    assert ch.text == "<lora:anna_v2:0.7>, annaxyz" and ch.loras[0].unet_weight == 0.7
    (webui / "models/Lora/anna_v2.json").write_text("{not json", encoding="utf-8")
    from expressiongrid.errors import CharacterError

    with pytest.raises(CharacterError, match="anna_v2.json: not valid JSON"):
        character_from_model_file(lora)
    # a character file naming that LoRA hears of it with the other file problems, before any model loads
    from expressiongrid.characters.check import check_characters
    from expressiongrid.characters.model import Character, LoraRef

    problems = check_characters([Character("anna", "Anna", loras=[LoraRef(lora)])], family="sd15")
    assert any("anna_v2.json: not valid JSON" in p for p in problems), problems
