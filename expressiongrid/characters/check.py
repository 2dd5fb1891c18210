"""Checks before any generation (``check_characters``) and the facts ``characters inspect`` shows.

Checks read safetensors headers only (no tensors, no torch) where they can, so a whole study's characters are
validated in well under a second; pickled ``.pt`` files go through the weights-only unpickler.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from expressiongrid.characters.formats import PICKLE_SUFFIXES, check_model_file, load_pickle, read_safetensors_header
from expressiongrid.characters.lora import FAMILY_NAMES, detect_family, parse_layout
from expressiongrid.characters.model import Character
from expressiongrid.characters.sidecars import read_sidecars
from expressiongrid.characters.tokens import token_problems
from expressiongrid.errors import CharacterError
from expressiongrid.prompts.chunking import CHUNK_LENGTH

# Caption tags that show whether training images had expressions (a first hint of a character's flexibility).
EXPRESSION_TAGS = (
    "smile", "smiling", "grin", "open mouth", "closed mouth", "parted lips", "teeth", "tongue out", "laughing",
    ":d", ":o", ":)", "crying", "tears", "sad", "angry", "frown", "frowning", "surprised", "shocked", "blush",
    "embarrassed", "scared", "disgust", "pout", "smirk", "serious", "expressionless", "closed eyes",
    "one eye closed", "wink", "annoyed", "furrowed brow", "raised eyebrows", "screaming", "nervous",
)


def _family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def describe_file(path: str | Path) -> dict:
    """Kind, format, family and width of a model file from its header (safetensors) or safe unpickling.

    Raises ``CharacterError`` for missing, unreadable, truncated, hostile or unrecognised files.
    """
    path = check_model_file(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header = read_safetensors_header(path)
        shapes = {k: tuple(v["shape"]) for k, v in header.tensors.items()}
        metadata = header.metadata
        data = None
    elif suffix in PICKLE_SUFFIXES:
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise CharacterError(f"{path}: unrecognised content ({type(data).__name__}, expected a dict of tensors)")
        shapes = {k: tuple(v.shape) for k, v in data.items() if hasattr(v, "shape")}
        metadata = {}
    else:
        raise CharacterError(f"{path}: unsupported file type {suffix!r} (expected .safetensors or .pt)")
    layout = None
    if not (data is not None and "string_to_param" in data):
        try:
            layout = parse_layout(shapes.keys(), path, shapes)
        except CharacterError as exc:
            if "not a LoRA file" not in str(exc):
                raise
    if layout is not None:
        family, width, reason = detect_family(layout, shapes)
        return {"kind": "lora", "format": layout.format, "family": family, "width": width,
                "family_reason": reason, "layout": layout, "shapes": shapes, "metadata": metadata}
    # An embedding: find its vectors the way A1111 does.
    if data is not None and "string_to_param" in data:
        params = data["string_to_param"]
        values = list(params.values()) if hasattr(params, "values") else []
        if len(values) != 1:
            raise CharacterError(f"{path}: string_to_param holds {len(values)} entries; an embedding has exactly one")
        shape, fmt = tuple(values[0].shape), "a1111"
    elif "clip_l" in shapes and "clip_g" in shapes:
        shape, fmt = shapes["clip_g"], "sdxl"
    elif len(shapes) == 1:  # diffusers {token: vector}, civitai {"emb_params": ...}
        key = next(iter(shapes))
        shape = shapes[key]
        fmt = "safetensors" if suffix == ".safetensors" else "diffusers"
    else:
        raise CharacterError(f"{path}: neither a LoRA nor an embedding (keys such as {sorted(shapes)[:3]})")
    if len(shape) == 1:
        shape = (1, shape[0])
    if len(shape) != 2:
        raise CharacterError(f"{path}: embedding tensor has shape {shape}; expected (vectors, width)")
    from expressiongrid.characters.embeddings import FAMILY_BY_WIDTH

    width = int(shape[1])
    family = "sdxl" if fmt == "sdxl" else FAMILY_BY_WIDTH.get(width, "unknown")
    reason = "it holds clip_l and clip_g vectors" if fmt == "sdxl" else f"vector width {width}"
    return {"kind": "embedding", "format": fmt, "family": family, "width": width, "family_reason": reason,
            "vectors": int(shape[0]), "metadata": metadata}


def family_problem(path, info: dict, family: str, text_width: int | None) -> str | None:
    """A message if the file was made for another model family (or text-encoder width) than the model's."""
    if info["family"] not in ("unknown", family):
        return (
            f"{path}: this {info['kind']} is for {_family_name(info['family'])} ({info['family_reason']}) but the model "
            f"is {_family_name(family)}; use the {_family_name(family)} version of this {info['kind']}"
        )
    if text_width is not None and info.get("width") not in (None, text_width):
        return (
            f"{path}: this {info['kind']} was made for a text encoder {info['width']} wide but the model's is "
            f"{text_width} wide ({_family_name(family)}); it belongs to another model"
        )
    return None


def check_characters(chars: list[Character], family: str = "sd15", text_width: int | None = None,
                     tokenizer=None) -> list[str]:
    """Every problem with the characters' files, found before any model weights are loaded.

    Checks that each file exists and is readable, has a recognised format (LoRA where a LoRA is expected,
    embedding where an embedding is), is not truncated or hostile, and was made for ``family`` (and, when
    given, a text encoder ``text_width`` wide); embedding tokens must not collide.
    """
    problems: list[str] = []
    infos: dict[Path, dict | str] = {}
    for ch in chars:
        for wanted, refs in (("lora", ch.loras), ("embedding", ch.embeddings)):
            for ref in refs:
                path = Path(ref.path)
                first_sight = path not in infos
                if path not in infos:
                    try:
                        infos[path] = describe_file(path)
                    except CharacterError as exc:
                        infos[path] = str(exc)
                        problems.append(f"character {ch.id!r}: {exc}")
                        continue
                    problem = family_problem(path, infos[path], family, text_width)
                    if problem:
                        problems.append(f"character {ch.id!r}: {problem}")
                    try:  # NAME.json / NAME.civitai.info beside it feed the metadata: a broken one is said now
                        read_sidecars(path)
                    except CharacterError as exc:
                        problems.append(f"character {ch.id!r}: {exc}")
                info = infos[path]
                if isinstance(info, dict) and info.get("vectors", 0) > CHUNK_LENGTH and first_sight:
                    problems.append(
                        f"character {ch.id!r}: {path} is an embedding of {info['vectors']} vectors; one prompt "
                        f"chunk holds at most {CHUNK_LENGTH}, so it cannot be used (retrain it with fewer vectors)"
                    )
                if isinstance(info, dict) and info["kind"] != wanted:
                    problems.append(
                        f"character {ch.id!r}: {path} is listed as a {wanted} but is a {info['kind']}; "
                        f"move it to [[{info['kind']}]]"
                    )
    requests = [(str(e.path), e.token) for ch in chars for e in ch.embeddings]
    problems += token_problems(requests, tokenizer)
    return list(dict.fromkeys(problems))


def _tag_frequency(metadata: dict) -> Counter:
    counts: Counter = Counter()
    try:
        data = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return counts
    for tags in (data.values() if isinstance(data, dict) else []):
        if isinstance(tags, dict):
            for tag, n in tags.items():
                if isinstance(n, (int, float)):
                    counts[str(tag).strip()] += int(n)
    return counts


def training_info(metadata: dict) -> dict:
    """What kohya stored about training: base model, resolution, sizes, and the caption tags."""
    from expressiongrid.characters.files import kohya_trigger_words

    def pick(*keys):
        for k in keys:
            if metadata.get(k) not in (None, "", "None"):
                return metadata[k]
        return None

    tags = _tag_frequency(metadata)
    lowered = Counter()
    for tag, n in tags.items():
        lowered[tag.lower().replace("_", " ")] += n
    info = {
        "base_model": pick("ss_base_model_version", "modelspec.architecture"),
        "base_checkpoint": pick("ss_sd_model_name"),
        "resolution": pick("ss_resolution", "modelspec.resolution"),
        "network_module": pick("ss_network_module"),
        "network_dim": pick("ss_network_dim"),
        "network_alpha": pick("ss_network_alpha"),
        "training_images": pick("ss_num_train_images"),
        "epochs": pick("ss_num_epochs", "ss_epoch"),
        "steps": pick("ss_max_train_steps", "ss_steps"),
        "output_name": pick("ss_output_name", "modelspec.title"),
        "trigger_words": kohya_trigger_words(metadata),
        "top_tags": dict(tags.most_common(15)),
        "expression_tags": {t: lowered[t] for t in EXPRESSION_TAGS if lowered.get(t)},
        "expression_tags_absent": [t for t in EXPRESSION_TAGS if not lowered.get(t)] if tags else [],
    }
    return {k: v for k, v in info.items() if v not in (None, {}, [])}


def inspect_file(path: str | Path) -> dict:
    """Everything ``characters inspect`` reports about a LoRA or embedding file (JSON-serialisable)."""
    from expressiongrid.characters import hashes

    path = Path(path)
    info = describe_file(path)
    out = {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "kind": info["kind"],
        "format": info["format"],
        "family": info["family"],
        "family_reason": info["family_reason"],
    }
    if info["kind"] == "lora":
        from expressiongrid.characters.lora import delta_shape, load_lora

        lora = load_lora(path)
        ranks = sorted({m.rank for m in lora.modules})
        alphas = [m.alpha for m in lora.modules]
        known = sorted({a for a in alphas if a is not None})
        out["text_width"] = info["width"]
        out["modules"] = {
            "unet": sum(m.target == "unet" for m in lora.modules),
            "text_encoder": sum(m.target != "unet" for m in lora.modules),
            "conv": sum(len(s) == 4 and s[2:] != (1, 1) for s in (delta_shape(m) for m in lora.modules)),
        }
        kinds = sorted({m.kind for m in lora.modules})
        if kinds != ["lora"]:
            out["format"] = f"{info['format']} ({', '.join({'lora': 'LoRA', 'loha': 'LoHa', 'lokr': 'LoKr'}[k] for k in kinds)})"
        out["rank"] = ranks[0] if len(ranks) == 1 else ranks
        out["alpha"] = (known[0] if len(known) == 1 else known) if known else None
        out["alphas_vary"] = len(known) > 1 or (bool(known) and None in alphas)
        out["scale_range"] = [min(m.scale for m in lora.modules), max(m.scale for m in lora.modules)]
        out["hashes"] = {"autov2": hashes.autov2(path), "lora_short_hash": hashes.lora_short_hash(path),
                         "sha256": hashes.sha256(path)}
        if path.suffix.lower() == ".safetensors":
            out["hashes"]["addnet"] = hashes.addnet_hash(path)
        training = training_info(info["metadata"])
        if training:
            out["training"] = training
    else:
        from expressiongrid.characters.embeddings import load_embedding

        emb = load_embedding(path)
        out["vectors"] = emb.n_vectors
        out["width"] = emb.width
        if emb.metadata:
            out["training"] = {k: v for k, v in emb.metadata.items() if isinstance(v, (str, int, float))}
        out["hashes"] = {"autov2": hashes.autov2(path), "ti_short_hash": hashes.embedding_short_hash(path),
                         "sha256": hashes.sha256(path)}
    return out
