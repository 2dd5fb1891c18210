"""Generators of real LoRA and embedding files for a given pipeline (the built-in tiny model in tests and
the demo): kohya/A1111, diffusers and peft LoRAs, A1111/safetensors/diffusers embeddings, and files that
must be refused (SDXL-shaped LoRA, too-wide embedding, truncated file).

``make_demo_characters(pipe, out_dir)`` writes one LoRA character and one embedding character (model files
plus character TOML files) that visibly change the tiny model's images.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_EMBEDDING_TOKEN = "demoface"

# Layer-name fragments a typical SD1.5 character LoRA trains (kohya's default targets plus LoCon convs).
_UNET_LINEAR = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
_TE_LINEAR = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _targets(pipe, conv: bool, te: bool):
    """``(target, module path, weight shape)`` of every layer a generated LoRA adapts."""
    import torch

    out = []
    for name, mod in pipe.unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.endswith(_UNET_LINEAR):
            out.append(("unet", name, tuple(mod.weight.shape)))
        elif isinstance(mod, torch.nn.Conv2d) and (name.endswith(("proj_in", "proj_out"))
                                                    or (conv and ".resnets." in name and name.endswith(("conv1", "conv2")))):
            out.append(("unet", name, tuple(mod.weight.shape)))
    if te:
        for name, mod in pipe.text_encoder.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.endswith(_TE_LINEAR):
                out.append(("te", name.removeprefix("text_model."), tuple(mod.weight.shape)))
    return out


def lora_factors(pipe, *, rank: int = 4, conv: bool = True, te: bool = True, seed: int = 0, strength: float = 1.0):
    """Random LoRA factors for the pipeline's layers: list of ``(target, path, down, up)`` (alpha not applied).

    ``strength`` scales the up matrices; 1.0 changes the tiny model's images clearly but not into noise.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for target, path, shape in _targets(pipe, conv, te):
        out_ch, in_ch = shape[0], shape[1]
        kernel = shape[2:] if len(shape) == 4 else ()
        fan_in = in_ch * (kernel[0] * kernel[1] if kernel else 1)
        down = torch.randn((rank, in_ch, *kernel), generator=gen) / fan_in ** 0.5
        up = torch.randn((out_ch, rank, *((1, 1) if kernel else ())), generator=gen) * (strength * 0.35 / rank ** 0.5)
        out.append((target, path, down, up))
    return out


def _kohya_name(target: str, path: str) -> str:
    if target == "unet":
        return "lora_unet_" + path.replace(".", "_")
    return "lora_te_text_model_" + path.replace(".", "_")


def kohya_metadata(rank: int, alpha: float, trigger: str | None = None, tags: dict | None = None) -> dict[str, str]:
    """The metadata kohya sd-scripts writes (a realistic subset)."""
    tags = tags or {"demochar": 20, "1girl": 20, "smile": 7, "open mouth": 3, "looking at viewer": 15}
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
        "ss_resolution": "(512, 512)",
        "ss_num_train_images": "20",
        "ss_num_epochs": "10",
        "ss_max_train_steps": "2000",
        "ss_output_name": "demochar",
        "ss_tag_frequency": json.dumps({"10_demochar": tags}),
        "ss_dataset_dirs": json.dumps({"10_demochar": {"n_repeats": 10, "img_count": 20}}),
    }
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
    return meta


def save_kohya_lora(pipe, path, *, rank: int = 4, alpha: float | None = 2.0, varied_alphas: bool = False,
                    fold_alphas: bool = False, conv: bool = True, te: bool = True, seed: int = 0,
                    strength: float = 1.0, metadata: dict | None = None, dtype=None) -> Path:
    """Write a kohya/A1111 LoRA (``lora_unet_*``/``lora_te_*`` with ``.alpha``, LoCon convs when ``conv``).

    ``varied_alphas`` gives every module its own alpha (the case diffusers' loader gets wrong).
    ``fold_alphas`` writes the same LoRA with ``alpha/rank`` folded into ``up`` and alpha = rank, i.e. a
    file with the same effect and uniform scale 1: the reference the varied-alpha file must match.
    """
    import torch

    from expressiongrid.characters.formats import save_safetensors

    state = {}
    for i, (target, mpath, down, up) in enumerate(lora_factors(pipe, rank=rank, conv=conv, te=te, seed=seed,
                                                               strength=strength)):
        a = (0.5 + (i % 7) * 0.75) * rank / 4 if varied_alphas else (alpha if alpha is not None else rank)
        name = _kohya_name(target, mpath)
        # Scale up so every module has the same effect whatever its alpha: the images then depend only
        # on whether alpha is honoured, not on which alphas were drawn.
        up = up * (rank / a)
        if fold_alphas:
            up = up * (a / rank)
            a = float(rank)
        state[f"{name}.lora_down.weight"] = down.contiguous()
        state[f"{name}.lora_up.weight"] = up.contiguous()
        if alpha is not None or varied_alphas or fold_alphas:
            state[f"{name}.alpha"] = torch.tensor(float(a))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    meta = kohya_metadata(rank, alpha if alpha is not None else rank)
    meta.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, path, metadata=meta)
    return path


def save_diffusers_lora(pipe, path, *, rank: int = 4, alpha: float = 8.0, te: bool = True, seed: int = 0,
                        strength: float = 1.0) -> Path:
    """Write a diffusers-format LoRA through diffusers' own ``save_lora_weights`` (peft ``lora_A``/``lora_B``
    keys under ``unet.``/``text_encoder.``, alpha in ``lora_adapter_metadata``). No conv layers: diffusers
    LoRAs target attention and linear layers."""
    from diffusers import StableDiffusionPipeline

    unet, text = {}, {}
    for target, mpath, down, up in lora_factors(pipe, rank=rank, conv=False, te=te, seed=seed, strength=strength):
        if down.dim() == 4:
            continue
        up = up * (rank / alpha)  # the same effect as a scale-1 LoRA, so alpha must be honoured
        dest = unet if target == "unet" else text
        prefix = mpath if target == "unet" else "text_model." + mpath
        dest[f"{prefix}.lora_A.weight"] = down.contiguous()
        dest[f"{prefix}.lora_B.weight"] = up.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    def meta(layers: dict) -> dict:
        # transformers 5 has no text_model level, so peft's targets are named without it
        modules = sorted({k.rsplit(".lora_", 1)[0].removeprefix("text_model.") for k in layers})
        return {"r": rank, "lora_alpha": alpha, "target_modules": modules}

    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), unet_lora_layers=unet, text_encoder_lora_layers=text or None, weight_name=path.name,
        unet_lora_adapter_metadata=meta(unet), text_encoder_lora_adapter_metadata=meta(text) if text else None,
    )
    return path


def save_peft_lora(pipe, directory, *, rank: int = 4, alpha: float = 8.0, seed: int = 0, strength: float = 1.0) -> Path:
    """Write a peft adapter for the UNet with peft itself (``adapter_model.safetensors`` +
    ``adapter_config.json``); returns the safetensors path."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    factors = {p: (d, u) for t, p, d, u in lora_factors(pipe, rank=rank, conv=False, te=False, seed=seed,
                                                        strength=strength) if d.dim() == 2}
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(factors), init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(pipe.unet), config)
    with torch.no_grad():
        for name, mod in model.named_modules():
            path = name.removeprefix("base_model.model.")
            if path in factors and hasattr(mod, "lora_A"):
                down, up = factors[path]
                mod.lora_A["default"].weight.copy_(down)
                mod.lora_B["default"].weight.copy_(up * (rank / alpha))
    directory = Path(directory)
    model.save_pretrained(str(directory))
    return directory / "adapter_model.safetensors"


def embedding_vectors(pipe, n_vectors: int = 2, seed: int = 0, words: tuple[str, ...] = ("angry", "crying", "smile"),
                      scale: float = 3.0):
    """Vectors that mean something to the model: strong mixes (``scale`` times) of the token vectors of ``words``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    table = pipe.text_encoder.get_input_embeddings().weight.detach().cpu()  # mixed with CPU draws below
    ids = [pipe.tokenizer.convert_tokens_to_ids(w + "</w>") for w in words]
    base = table[ids].float()
    mix = torch.softmax(torch.randn((n_vectors, len(ids)), generator=gen) * 2, dim=1)
    return (mix @ base) * scale + torch.randn((n_vectors, table.shape[1]), generator=gen) * table.std()


def save_a1111_embedding(path, vectors, *, parameter_dict: bool = False, name: str | None = None) -> Path:
    """A1111's ``.pt`` layout (``string_to_param``); ``parameter_dict`` stores an ``nn.ParameterDict`` as old
    A1111 versions did (needs the explicit allow-list to load)."""
    import torch

    path = Path(path)
    params = (torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())}) if parameter_dict
              else {"*": vectors.clone()})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": params, "name": name or path.stem,
                "step": 1500, "sd_checkpoint": "6ce0161689", "sd_checkpoint_name": "v1-5-pruned-emaonly"}, str(path))
    return path


def save_safetensors_embedding(path, vectors, key: str = "emb_params") -> Path:
    """The civitai ``.safetensors`` layout (``emb_params``, or ``string_to_param.*`` with that key)."""
    from expressiongrid.characters.formats import save_safetensors

    save_safetensors({key: vectors.contiguous()}, path)
    return Path(path)


def save_diffusers_embedding(path, vector, token: str = "<concept>") -> Path:
    """diffusers' ``learned_embeds`` layout: ``{token: vector}`` (one vector, 1-D), ``.bin`` or ``.safetensors``."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from expressiongrid.characters.formats import save_safetensors

        save_safetensors({token: vector.reshape(-1).contiguous()}, path)
    else:
        torch.save({token: vector.reshape(-1).clone()}, str(path))
    return path


def save_sdxl_lora(path, rank: int = 2) -> Path:
    """A kohya SDXL LoRA key set (``lora_te1_``/``lora_te2_``, sgm ``input_blocks`` names, 2048-wide context)."""
    import torch
    from expressiongrid.characters.formats import save_safetensors

    state = {}
    for name, (out_f, in_f) in {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280),
    }.items():
        state[f"{name}.lora_down.weight"] = torch.zeros(rank, in_f)
        state[f"{name}.lora_up.weight"] = torch.zeros(out_f, rank)
        state[f"{name}.alpha"] = torch.tensor(1.0)
    save_safetensors(state, path, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return Path(path)


def save_wide_embedding(path, width: int = 1280, n_vectors: int = 2) -> Path:
    """An embedding of another family's width (1024: SD2, 1280: SDXL's second encoder)."""
    import torch

    if Path(path).suffix == ".safetensors":
        return save_safetensors_embedding(path, torch.randn(n_vectors, width))
    return save_a1111_embedding(path, torch.randn(n_vectors, width))


def truncate_copy(src, dst, keep_fraction: float = 0.6) -> Path:
    """A copy of ``src`` cut short, as an interrupted download leaves it."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return Path(dst)


def make_demo_characters(pipe, out_dir) -> list[Path]:
    """Write a LoRA character and an embedding character for ``pipe`` into ``out_dir``.

    Returns the two character TOML files (``demo-lora.toml``, ``demo-embedding.toml``); the model files lie
    beside them. Both change the tiny model's images visibly.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lora = save_kohya_lora(pipe, out_dir / "demo_lora.safetensors", rank=4, varied_alphas=True, seed=7,
                           strength=1.5, metadata={"modelspec.trigger_phrase": "demochar"})
    emb = save_a1111_embedding(out_dir / "demo_embedding.pt", embedding_vectors(pipe, n_vectors=6, seed=3, scale=8.0))
    lora_toml = out_dir / "demo-lora.toml"
    lora_toml.write_text(
        "# Demo character: a LoRA generated for the built-in tiny model.\n"
        'label = "demo LoRA"\n'
        'text = "<lora:demo_lora:1>, demochar"\n\n'
        "[[lora]]\n"
        f'file = "{lora.name}"\n'
        "weight = 1.0\n",
        encoding="utf-8",
    )
    emb_toml = out_dir / "demo-embedding.toml"
    emb_toml.write_text(
        "# Demo character: a six-vector textual-inversion embedding for the built-in tiny model.\n"
        'label = "demo embedding"\n'
        f'text = "{DEMO_EMBEDDING_TOKEN}"\n\n'
        "[[embedding]]\n"
        f'file = "{emb.name}"\n'
        f'token = "{DEMO_EMBEDDING_TOKEN}"\n',
        encoding="utf-8",
    )
    return [lora_toml, emb_toml]
