"""Model loading: tiny, single-file checkpoints in the original LDM layout, diffusers folders, hub cache."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from expressiongrid import tiny
from expressiongrid.engine.loading import SD15_CONFIG_DIR, ModelSpec, load_model, pick_device
from expressiongrid.errors import ModelError, UsageError

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


# --- diffusers -> original LDM key layout (test-only; the inverse of diffusers' single-file conversion) ---

def _unet_key_map(layers_per_block: int, n_blocks: int = 4) -> list[tuple[str, str]]:
    """(ldm prefix, diffusers prefix) pairs for an SD1.5-layout UNet with `layers_per_block`."""
    pairs = [
        ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
        ("middle_block.1.", "mid_block.attentions.0."),
        ("middle_block.0.", "mid_block.resnets.0."), ("middle_block.2.", "mid_block.resnets.1."),
    ]
    per = layers_per_block + 1
    for i in range(n_blocks):
        for j in range(layers_per_block):
            pairs.append((f"input_blocks.{per * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i < n_blocks - 1:
                pairs.append((f"input_blocks.{per * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per):
            pairs.append((f"output_blocks.{per * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i > 0:
                pairs.append((f"output_blocks.{per * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n_blocks - 1:
            pairs.append((f"input_blocks.{per * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            pairs.append((f"output_blocks.{per * i + per - 1}.{1 if i == 0 else 2}.", f"up_blocks.{i}.upsamplers.0."))
    return pairs


_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
           ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def unet_to_ldm(state: dict, layers_per_block: int) -> dict:
    out = {}
    pairs = sorted(_unet_key_map(layers_per_block), key=lambda p: -len(p[1]))
    for key, value in state.items():
        ldm_prefix, hf_prefix = next((l, h) for l, h in pairs if key.startswith(h))
        rest = key[len(hf_prefix):]
        if "resnets" in hf_prefix:
            for ldm, hf in _RESNET:
                rest = rest.replace(hf, ldm)
        out["model.diffusion_model." + ldm_prefix + rest] = value
    return out


def vae_to_ldm(state: dict, layers_per_block: int, n_blocks: int = 4) -> dict:
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(n_blocks):
        for j in range(layers_per_block):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < n_blocks - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{n_blocks - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(layers_per_block + 1):
            pairs.append((f"decoder.up.{n_blocks - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for key, value in state.items():
        new = key
        for ldm, hf in pairs:
            new = new.replace(hf, ldm)
        if "attn_1" in new:
            for ldm, hf in attn:
                new = new.replace("attn_1." + hf, "attn_1." + ldm)
            if new.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM stores the VAE's attention projections as 1x1 convs
        out["first_stage_model." + new] = value
    return out


def text_encoder_to_ldm(state: dict) -> dict:
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in state.items()}


def write_ldm_checkpoint(pipe, path: Path) -> None:
    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), tiny.UNET_CONFIG["layers_per_block"]))
    state.update(vae_to_ldm(pipe.vae.state_dict(), tiny.VAE_CONFIG["layers_per_block"]))
    state.update(text_encoder_to_ldm(pipe.text_encoder.state_dict()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def write_config_folder(pipe, folder: Path) -> Path:
    """A diffusers config folder (configs and tokenizer, no weights) like the shipped SD1.5 one."""
    pipe.save_pretrained(folder, safe_serialization=True)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder


@pytest.fixture(scope="module")
def tiny_config_dir(tiny_pipeline, tmp_path_factory):
    return write_config_folder(tiny_pipeline, tmp_path_factory.mktemp("tiny-config"))


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_tiny_by_name(tiny_pipeline):
    model = load_model(ModelSpec("tiny"))
    assert model.name == "tiny" and model.hash is None and model.family == "sd15"
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert_same_weights(model.pipe.unet, tiny_pipeline.unet)


def test_single_file_ldm_checkpoint_loads_bit_identically(tiny_pipeline, tiny_config_dir, tmp_path):
    path = tmp_path / "tinyckpt-v1.safetensors"
    write_ldm_checkpoint(tiny_pipeline, path)
    model = load_model(ModelSpec(str(path), config=str(tiny_config_dir)))
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(model.pipe, part), getattr(tiny_pipeline, part))
    assert model.name == "tinyckpt-v1"
    import hashlib

    assert model.hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]  # A1111 AutoV2


def test_ckpt_is_loaded_without_running_pickled_code(tmp_path, tiny_config_dir):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    with path.open("wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(ModelError, match="refused"):
        load_model(ModelSpec(str(path), config=str(tiny_config_dir)))
    assert not marker.exists()


def test_ckpt_with_plain_tensors_loads(tiny_pipeline, tiny_config_dir, tmp_path):
    from safetensors.torch import load_file

    st = tmp_path / "m.safetensors"
    write_ldm_checkpoint(tiny_pipeline, st)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": load_file(str(st))}, ckpt)
    model = load_model(ModelSpec(str(ckpt), config=str(tiny_config_dir)))
    assert_same_weights(model.pipe.unet, tiny_pipeline.unet)


def test_shipped_sd15_configs_are_complete_and_tokenizer_is_clip():
    from transformers import CLIPTokenizer

    index = json.loads((SD15_CONFIG_DIR / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        assert part in index and (SD15_CONFIG_DIR / part).is_dir()
    unet = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    tok = CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer")
    # The ids openai/clip-vit-large-patch14 gives (SD1.5's tokenizer).
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_diffusers_folder_and_separate_vae(tiny_pipeline, tmp_path):
    folder = tmp_path / "tiny-diffusers"
    tiny_pipeline.save_pretrained(folder)
    vae_dir = tmp_path / "my-vae"
    other_vae = tiny.build_vae()
    with torch.no_grad():
        for p in other_vae.parameters():
            p.mul_(0.5)
    other_vae.save_pretrained(vae_dir)
    model = load_model(ModelSpec(str(folder), vae=str(vae_dir)))
    assert model.name == "tiny-diffusers" and model.vae_name == "my-vae"
    assert_same_weights(model.pipe.unet, tiny_pipeline.unet)
    assert_same_weights(model.pipe.vae, other_vae)


def test_repo_id_resolves_from_the_hub_cache_offline(tiny_pipeline, tmp_path, monkeypatch):
    """A snapshot laid out like huggingface_hub's cache loads by repo id with no network."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: make sure the real hub is never asked
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-sd"
    tiny_pipeline.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_model(ModelSpec("someone/tiny-sd", cache_dir=str(tmp_path / "cache")))
    assert model.name == "someone/tiny-sd"
    assert_same_weights(model.pipe.unet, tiny_pipeline.unet)
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_model(ModelSpec("someone/missing", cache_dir=str(tmp_path / "cache")))


def test_bad_specs_are_reported():
    with pytest.raises(ModelError, match="not found"):
        load_model(ModelSpec("no/such/file.safetensors"))
    with pytest.raises(UsageError, match="fp32, fp16, bf16"):
        load_model(ModelSpec("tiny", dtype="fp8"))
    with pytest.raises(UsageError, match="clip skip"):
        load_model(ModelSpec("tiny", clip_skip=0))


def test_dtype_and_device_selection():
    model = load_model(ModelSpec("tiny", dtype="bf16"))
    assert model.pipe.unet.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == expected
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            pick_device("cuda")


def test_separate_single_file_vae_as_civitai_ships_it(tiny_pipeline, tiny_config_dir, tmp_path):
    """A standalone VAE file (LDM keys without the first_stage_model. prefix, like vae-ft-mse-840000)."""
    other_vae = tiny.build_vae()
    with torch.no_grad():
        for p in other_vae.parameters():
            p.mul_(0.75)
    keys = vae_to_ldm(other_vae.state_dict(), tiny.VAE_CONFIG["layers_per_block"])
    path = tmp_path / "my-vae.safetensors"
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in keys.items()}, str(path))
    model = load_model(ModelSpec("tiny", vae=str(path), config=str(tiny_config_dir)))
    assert_same_weights(model.pipe.vae, other_vae)
    assert model.vae_name == "my-vae.safetensors"  # A1111 "VAE": file name with extension
    import hashlib

    assert model.vae_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_single_file_uses_the_shipped_sd15_configs_offline(tiny_pipeline, tmp_path, monkeypatch):
    """Without config= the shipped SD1.5 folder is used, with no network: the tiny file then fails on
    shape (768-wide SD1.5 text encoder vs 32) with a ModelError, not a hub lookup."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "not-sd15.safetensors"
    write_ldm_checkpoint(tiny_pipeline, path)
    with pytest.raises(ModelError, match=r"not a loadable SD1\.5 checkpoint.*768.*SD1\.5-family"):
        load_model(ModelSpec(str(path)))
