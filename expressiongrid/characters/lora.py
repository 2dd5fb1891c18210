"""LoRA files: recognise the layout (kohya/A1111, diffusers, peft), read per-module rank and alpha, and
resolve every module to a layer of a diffusers SD1.5 UNet or CLIP text encoder.

Layouts (``format`` values):
- ``kohya``: ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` and ``lora_te_...``
  (A1111, civitai, kohya sd-scripts, LyCORIS LoCon incl. ``lora_mid`` for conv layers). The module name is the
  diffusers module path with dots replaced by underscores, so it is resolved against the model's own modules.
- ``diffusers``: ``unet.<path>.lora_A.weight`` / ``lora_B`` (or the older ``.lora.down.weight``,
  ``.processor.to_q_lora.down.weight`` and ``lora_linear_layer`` spellings) and ``text_encoder.<path>...``;
  alpha from ``<path>.alpha`` keys or the ``lora_adapter_metadata`` that diffusers writes.
- ``peft``: ``base_model.model.<path>.lora_A.weight`` with ``adapter_config.json`` beside the file.

Scale per module is ``alpha / rank`` (peft ``use_rslora``: ``alpha / sqrt(rank)``); a module with no alpha has
scale 1, as in kohya and A1111. LyCORIS LoHa (``hada_*``) and LoKr (``lokr_*``, incl. Tucker cores) work with
LyCORIS's formulas and scale ``alpha / dim``. LyCORIS DoRA (a ``dora_scale`` beside any of these) is applied as
A1111 1.9+ applies it: the scaled change is added to the base weight, each input column of the sum is rescaled
to the stored magnitude, and the difference to the base weight, times the LoRA weight, is the change. Formats
A1111 loads but this tool does not (OFT, BOFT, (IA)^3, GLoRA, full differences, norm layers, bias differences,
peft's DoRA) are refused with an error naming the format, never silently skipped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.errors import CharacterError

logger = logging.getLogger(__name__)

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_KOHYA_LORA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha"}
# LyCORIS LoHa (Hadamard product of two low-rank products) and LoKr (Kronecker product) tensors.
_LYCORIS_PARTS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                  "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}

# diffusers spellings of the two LoRA matrices, longest first so ".lora.down" is not read as "_lora.down".
_DIFFUSERS_SUFFIXES = [
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),  # attention-processor layout: attn1.processor.to_q_lora.down.weight
    ("_lora.up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
]
_PEFT_ADAPTER_RE = re.compile(r"\.lora_([AB])\.[A-Za-z0-9_]+\.weight$")  # lora_A.<adapter>.weight


@dataclass
class LoraModuleSpec:
    """One adapted layer as named in the file (tensor keys), before it is matched to a model layer."""

    target: str  # "unet", "te" (SD1.5 text encoder) or "te2" (SDXL's second text encoder)
    name: str  # kohya name (underscored) or the dotted module path
    keys: dict[str, str] = field(default_factory=dict)  # role ("down", "up", "mid", "alpha") -> tensor key
    dotted: bool = False  # name is a real module path (diffusers/peft), not kohya's underscored form


@dataclass
class LoraLayout:
    """A LoRA file's layout (``kohya``, ``diffusers`` or ``peft``) and its modules, from key names alone."""

    format: str  # "kohya" | "diffusers" | "peft"
    modules: list[LoraModuleSpec]


def _unsupported(path, kind: str, example: str) -> CharacterError:
    return CharacterError(
        f"{path}: {kind} modules (e.g. {example!r}) are not supported yet; only LoRA/LoCon "
        "(lora_down/lora_up, lora_A/lora_B), LoHa and LoKr files, with or without DoRA, can be used as characters"
    )


# Module kinds A1111 (or LyCORIS) loads that this tool does not, by the tensor name that gives them away.
_UNSUPPORTED_PARTS = (
    (("oft_blocks", "oft_diag", "oft_R", "rescale"), "OFT (orthogonal finetuning)"),
    (("diff_b", "bias"), "bias difference ('.bias' / 'diff_b')"),
    (("diff",), "full weight difference (LyCORIS 'full')"),
    (("w_norm", "b_norm"), "norm-layer (LyCORIS 'norm')"),
    (("on_input", "weight"), "(IA)^3"),
    (("a1.weight", "a2.weight", "b1.weight", "b2.weight"), "GLoRA"),
)


def _unsupported_kind(part: str, key: str, shapes: dict | None) -> str | None:
    """The name of the unsupported format a tensor part (``oft_blocks``, ``diff_b``, ...) belongs to."""
    for parts, kind in _UNSUPPORTED_PARTS:
        if part in parts:
            # LyCORIS stores BOFT's butterfly factors as a 4-D oft_blocks [m, blocks, b, b]; OFT's are 3-D.
            if kind.startswith("OFT") and shapes and len(shapes.get(key, ())) == 4:
                return "BOFT (butterfly orthogonal finetuning)"
            return kind
    return None


def parse_layout(keys, path="<file>", shapes: dict | None = None) -> LoraLayout:
    """Group tensor keys into modules and name the layout; raise ``CharacterError`` for unknown files.

    `shapes` (tensor name -> shape), when known, tells OFT from BOFT in the error for those formats."""
    keys = list(keys)
    if not keys:
        raise CharacterError(f"{path}: the file holds no tensors")
    if any(k.startswith(KOHYA_PREFIXES) for k in keys):
        return _parse_kohya(keys, path, shapes)
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "lora_linear_layer" in k or "_lora.down." in k
           for k in keys):
        return _parse_dotted(keys, path)
    peft_kind = next((kind for k in keys for marker, kind in (("boft_R", "BOFT (butterfly orthogonal finetuning, peft)"),
                                                               ("oft_r", "OFT (orthogonal finetuning, peft)"))
                      if f".{marker}" in k), None)
    if peft_kind:
        example = next(k for k in keys if ".boft_R" in k or ".oft_r" in k)
        raise _unsupported(path, peft_kind, example)
    raise CharacterError(f"{path}: not a LoRA file (no lora_unet_/lora_te_/lora_A/lora_down keys); key example {keys[0]!r}")


def _parse_kohya(keys, path, shapes: dict | None = None) -> LoraLayout:
    modules: dict[str, LoraModuleSpec] = {}
    for key in keys:
        stem, _, part = key.partition(".")
        if not stem.startswith(KOHYA_PREFIXES):
            raise CharacterError(f"{path}: unexpected key {key!r} in a kohya-style LoRA")
        unsupported = _unsupported_kind(part, key, shapes)
        if unsupported:
            raise _unsupported(path, unsupported, key)
        role = _KOHYA_LORA_PARTS.get(part) or (part if part in _LYCORIS_PARTS or part == "dora_scale" else None)
        if role is None:
            raise CharacterError(f"{path}: unrecognised LoRA key {key!r}")
        if stem.startswith("lora_unet_"):
            target = "unet"
        elif stem.startswith("lora_te2_"):
            target = "te2"
        else:
            target = "te"
        spec = modules.setdefault(stem, LoraModuleSpec(target=target, name=stem))
        spec.keys[role] = key
    return LoraLayout("kohya", _complete(modules, path))


def _normalise_path(target: str, path: str) -> str:
    """Map diffusers' attention-processor spellings to the real module path."""
    if target == "unet":
        path = path.replace(".processor.", ".")
        if path.endswith(".to_out"):
            path += ".0"
    else:
        path = path.removeprefix("text_model.")
        for short, real in (("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out", "out_proj")):
            if path.endswith("." + short):
                path = path[: -len(short)] + real
    return path


def _guess_target(module_path: str) -> str:
    if module_path.startswith(("text_model.", "encoder.layers", "embeddings.")):
        return "te"
    return "unet"


def _parse_dotted(keys, path) -> LoraLayout:
    modules: dict[tuple[str, str], LoraModuleSpec] = {}
    fmt = "diffusers"
    for key in keys:
        body = key
        if body.startswith("unet."):
            target, body = "unet", body[len("unet."):]
        elif body.startswith("text_encoder_2."):
            target, body = "te2", body[len("text_encoder_2."):]
        elif body.startswith("text_encoder."):
            target, body = "te", body[len("text_encoder."):]
        else:
            fmt = "peft"
            body = body.removeprefix("base_model.model.")
            target = None
        m = _PEFT_ADAPTER_RE.search(body)
        if m:  # peft keys that still carry the adapter name
            body = body[: m.start()] + f".lora_{m.group(1)}.weight"
        for suffix, role in _DIFFUSERS_SUFFIXES:  # noqa: B007 (role is used after the break)
            if body.endswith(suffix):
                module_path = body[: -len(suffix)]
                break
        else:
            if "lora_magnitude_vector" in body:
                raise _unsupported(path, "peft DoRA (lora_magnitude_vector; LyCORIS's dora_scale works)", key)
            raise CharacterError(f"{path}: unrecognised LoRA key {key!r}")
        if target is None:
            target = _guess_target(module_path)
        module_path = _normalise_path(target, module_path)
        spec = modules.setdefault((target, module_path), LoraModuleSpec(target=target, name=module_path, dotted=True))
        spec.keys[role] = key
    return LoraLayout(fmt, _complete(modules, path))


def module_kind(keys) -> str:
    """"lora", "loha" or "lokr" from the tensor roles a module has."""
    if any(k.startswith("hada_") for k in keys):
        return "loha"
    if any(k.startswith("lokr_") for k in keys):
        return "lokr"
    return "lora"


def _is_complete(keys) -> bool:
    kind = module_kind(keys)
    if kind == "loha":
        return {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= set(keys)
    if kind == "lokr":
        has1 = "lokr_w1" in keys or {"lokr_w1_a", "lokr_w1_b"} <= set(keys)
        has2 = "lokr_w2" in keys or {"lokr_w2_a", "lokr_w2_b"} <= set(keys)
        return has1 and has2
    return "down" in keys and "up" in keys


def _complete(modules: dict, path) -> list[LoraModuleSpec]:
    out = []
    for spec in modules.values():
        if not _is_complete({r: k for r, k in spec.keys.items() if r != "dora_scale"}):
            if set(spec.keys) == {"alpha"}:
                continue  # an alpha without weights changes nothing (some trainers leave them behind)
            raise CharacterError(f"{path}: module {spec.name!r} lacks some of its matrices "
                                 f"(has {', '.join(sorted(spec.keys))}); the file is incomplete")
        out.append(spec)
    if not out:
        raise CharacterError(f"{path}: no LoRA modules found")
    return out


# --- model family from names and shapes ---------------------------------------------------------------------

FAMILY_BY_CONTEXT_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl", 32: "sd15"}  # 32: the built-in tiny model
FAMILY_NAMES = {"sd15": "SD 1.5", "sd2": "SD 2.x", "sdxl": "SDXL", "unknown": "unknown"}


def detect_family(layout: LoraLayout, shapes: dict[str, tuple]) -> tuple[str, int | None, str]:
    """``(family, text_width, reason)``: the model family the LoRA was trained for, from names and shapes."""
    names = [m.name for m in layout.modules]
    if any(m.target == "te2" or m.name.startswith("lora_te1_") for m in layout.modules):
        return "sdxl", None, "it has modules for SDXL's two text encoders (lora_te1/lora_te2/text_encoder_2)"
    if any("add_embedding" in n or "label_emb" in n for n in names):
        return "sdxl", None, "it adapts SDXL's added-conditioning embedding"
    unet_width = te_width = None  # the UNet's cross-attention input is the most telling width
    for m in layout.modules:
        down = _input_shape(m, shapes)
        if down is None or len(down) < 2:
            continue
        if m.target == "unet" and unet_width is None and re.search(r"attn2[._]to_[kv]$", m.name):
            unet_width = down[1]
        if m.target == "te" and te_width is None and re.search(r"(q_proj|k_proj|v_proj)$", m.name):
            te_width = down[1]
    width = unet_width if unet_width is not None else te_width
    if width is None:
        # Block names alone are weaker evidence than widths: kohya uses sgm names for SDXL, but a few SD1.5
        # tools do too, so they decide only when nothing can be measured.
        if any(("input_blocks" in n or "output_blocks" in n or "middle_block" in n) for n in names):
            return "sdxl", None, "it names UNet blocks the way kohya does for SDXL (input_blocks/output_blocks)"
        return "unknown", None, "no cross-attention or text-encoder attention module to measure"
    family = FAMILY_BY_CONTEXT_WIDTH.get(width, "unknown")
    note = " (the built-in tiny model, SD1.5-shaped)" if width == 32 else ""
    return family, width, f"text width {width}{note}"


def _input_shape(spec: LoraModuleSpec, shapes: dict) -> tuple | None:
    """``(rank, in_features, ...)``-like shape whose second entry is the layer's input width."""
    keys = spec.keys
    if "down" in keys:
        return shapes.get(keys["down"])
    if "hada_w1_b" in keys:
        return shapes.get(keys["hada_w1_b"])
    w1 = shapes.get(keys.get("lokr_w1", "")) or shapes.get(keys.get("lokr_w1_b", ""))
    w2 = shapes.get(keys.get("lokr_w2", "")) or shapes.get(keys.get("lokr_w2_b", ""))
    if w1 and w2 and len(w1) >= 2 and len(w2) >= 2:
        return (0, w1[1] * w2[1])
    return None


# --- tensors -------------------------------------------------------------------------------------------------

@dataclass
class LoraModule:
    """One module with its tensors and scale (alpha / rank) ready to be written into a layer."""

    target: str
    name: str
    dotted: bool
    down: object  # torch.Tensor [rank, in(, kh, kw)]
    up: object  # torch.Tensor [out, rank(, 1, 1)]
    mid: object | None  # torch.Tensor [rank, rank, kh, kw] (LoCon with Tucker decomposition)
    alpha: float | None
    rank: int
    scale: float
    converted: str | None = None  # "unet:<path>"/"te:<path>" from diffusers' kohya converter, if it could
    kind: str = "lora"  # "lora" (incl. LoCon), "loha" or "lokr"
    factors: dict = field(default_factory=dict)  # LoHa/LoKr tensors by role (hada_w1_a, lokr_w1, ...)
    dora_scale: object | None = None  # LyCORIS DoRA magnitude: [1, in(, 1, 1)] (or [out, 1(, 1, 1)])

    def tensors(self) -> dict:
        """Every tensor of the module by role (for moving them to the model's device)."""
        out = dict(self.factors)
        for role in ("down", "up", "mid", "dora_scale"):
            if getattr(self, role) is not None:
                out[role] = getattr(self, role)
        return out

    def set_tensors(self, tensors: dict) -> None:
        """Replace the module's tensors by role (after moving them to a device)."""
        for role, value in tensors.items():
            if role in ("down", "up", "mid", "dora_scale"):
                setattr(self, role, value)
            else:
                self.factors[role] = value


SGM_BLOCK_NAMES = ("input_blocks", "middle_block", "output_blocks")


def diffusers_module_paths(pairs: dict[str, tuple], unet_config=None) -> dict[str, str]:
    """kohya module name -> ``"unet:<path>"``/``"te:<path>"`` using diffusers' own kohya key converter.

    ``pairs`` maps kohya module names to ``(down, up)`` tensors. With ``unet_config``, names in the original
    Stable Diffusion (sgm) block layout (``input_blocks_4_1_...``) are first renumbered by diffusers'
    ``_maybe_map_sgm_blocks_to_diffusers``. Only the names are taken from diffusers: its alpha bookkeeping is
    not used (it keys some alphas under names its loader never looks up, which is how per-module alphas get
    lost; see DESIGN.md). Returns ``{}`` when the converter is unavailable or refuses the names; callers then
    resolve names against the model.
    """
    try:
        from diffusers.loaders.lora_conversion_utils import (
            _convert_non_diffusers_lora_to_diffusers,
            _maybe_map_sgm_blocks_to_diffusers,
        )
    except ImportError as exc:  # diffusers moved its private helpers: resolve against the model instead
        logger.debug("diffusers' LoRA key conversion helpers are unavailable: %s", exc)
        return {}
    owner: dict[int, str] = {}
    subset = {}
    for name, (down, up) in pairs.items():
        if not name.startswith(("lora_unet_", "lora_te_")):
            continue
        subset[f"{name}.lora_down.weight"], subset[f"{name}.lora_up.weight"] = down, up
        owner[id(down)] = name
    try:
        if unet_config is not None and any(b in k for k in subset for b in SGM_BLOCK_NAMES):
            subset = _maybe_map_sgm_blocks_to_diffusers(subset, unet_config)
        converted, _ = _convert_non_diffusers_lora_to_diffusers(dict(subset))
    except Exception as exc:  # private helpers: any refusal just means "resolve against the model instead"
        logger.debug("diffusers could not convert the LoRA's key names (%s); resolving them against the model", exc)
        return {}
    out: dict[str, str] = {}
    for key, tensor in converted.items():
        stem = owner.get(id(tensor))  # only down matrices are owned: one entry per module
        if stem is None:
            continue
        target = "unet" if key.startswith("unet.") else "te"
        body = key.split(".", 1)[1]
        for suffix, _ in _DIFFUSERS_SUFFIXES:
            if body.endswith(suffix):
                out[stem] = f"{target}:{_normalise_path(target, body[: -len(suffix)])}"
                break
    return out


def _plain_pairs(layout: LoraLayout, tensors: dict) -> dict[str, tuple]:
    """``name -> (down, up)`` of the plain kohya LoRA modules (the converter knows no lora_mid, LoHa, LoKr)."""
    return {spec.name: (tensors[spec.keys["down"]], tensors[spec.keys["up"]]) for spec in layout.modules
            if spec.target in ("unet", "te") and "down" in spec.keys and "mid" not in spec.keys}


@dataclass
class LoraFile:
    """A loaded LoRA file: modules with tensors and scales, its metadata and the family it was made for."""

    path: Path
    format: str
    modules: list[LoraModule]
    metadata: dict[str, str]
    family: str
    width: int | None


def _peft_config(path: Path) -> dict:
    cfg = path.parent / "adapter_config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CharacterError(f"{cfg}: not valid JSON ({exc})") from exc
    return {}


def _diffusers_metadata(metadata: dict[str, str], target: str) -> dict:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except ValueError:
        return {}
    prefix = {"unet": "unet.", "te": "text_encoder.", "te2": "text_encoder_2."}[target]
    return {k[len(prefix):]: v for k, v in packed.items() if k.startswith(prefix)}


def _pattern_value(patterns: dict, module_path: str, default):
    # peft matches patterns against the end of the module path (``(.*\.)?pattern$``)
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_path):
            return value
    return default


def load_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file into modules with per-module scale; raises ``CharacterError`` on any problem."""
    from expressiongrid.characters.formats import load_state

    path = Path(path)
    tensors, metadata = load_state(path)
    tensors = {k: v for k, v in tensors.items() if hasattr(v, "shape")}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    layout = parse_layout(tensors.keys(), path, shapes)
    family, width, _ = detect_family(layout, shapes)
    peft_cfg = _peft_config(path) if layout.format == "peft" else {}
    converted = diffusers_module_paths(_plain_pairs(layout, tensors)) if layout.format == "kohya" else {}
    modules = []
    for spec in layout.modules:
        kind = module_kind(spec.keys)
        dora = tensors.get(spec.keys.get("dora_scale", ""))
        if kind != "lora":
            modules.append(_lycoris_module(spec, kind, tensors, converted))
            modules[-1].dora_scale = dora
            continue
        down = tensors[spec.keys["down"]]
        up = tensors[spec.keys["up"]]
        mid = tensors.get(spec.keys.get("mid", ""))
        rank = int(down.shape[0])
        if up.shape[1] != rank:
            raise CharacterError(
                f"{path}: module {spec.name!r}: up matrix {tuple(up.shape)} does not fit down matrix "
                f"{tuple(down.shape)}; the file is corrupt"
            )
        alpha = None
        rslora = False
        if "alpha" in spec.keys:
            alpha = float(tensors[spec.keys["alpha"]].float().item())
        elif layout.format == "peft" and peft_cfg:
            alpha = float(_pattern_value(peft_cfg.get("alpha_pattern"), spec.name, peft_cfg.get("lora_alpha", rank)))
            rslora = bool(peft_cfg.get("use_rslora"))
        elif layout.format == "diffusers":
            meta = _diffusers_metadata(metadata, spec.target)
            if meta:
                alpha = float(_pattern_value(meta.get("alpha_pattern"), spec.name, meta.get("lora_alpha", rank)))
                rslora = bool(meta.get("use_rslora"))
        if alpha is None:
            scale = 1.0
        elif rslora:
            scale = alpha / math.sqrt(rank)
        else:
            scale = alpha / rank
        modules.append(LoraModule(spec.target, spec.name, spec.dotted, down, up, mid, alpha, rank, scale,
                                  converted.get(spec.name), dora_scale=dora))
    return LoraFile(path, layout.format, modules, metadata, family, width)


def _lycoris_module(spec: LoraModuleSpec, kind: str, tensors: dict, converted: dict) -> LoraModule:
    """A LoHa/LoKr module; scale = alpha / dim as in LyCORIS (dim: the rank of the first low-rank pair)."""
    factors = {role: tensors[key] for role, key in spec.keys.items() if role not in ("alpha", "dora_scale")}
    if kind == "loha":
        dim = int(factors["hada_w1_b"].shape[0])
    else:
        b = factors.get("lokr_w1_b", factors.get("lokr_w2_b"))
        dim = int(b.shape[0]) if b is not None else 0
    alpha = float(tensors[spec.keys["alpha"]].float().item()) if "alpha" in spec.keys else None
    scale = alpha / dim if alpha and dim else 1.0
    return LoraModule(spec.target, spec.name, spec.dotted, None, None, None, alpha, dim, scale,
                      converted.get(spec.name), kind, factors)


def _cp_weight(t, wa, wb):
    """LyCORIS's Tucker rebuild: core ``t`` [r, r, kh, kw] between ``wa`` [r, out] and ``wb`` [r, in]."""
    import torch

    temp = torch.einsum("ijkl,jr->irkl", t, wb)
    return torch.einsum("ijkl,ir->rjkl", temp, wa)


def _loha_parts(f: dict):
    """The two full-size products whose elementwise product is the LoHa weight change."""
    out = []
    for i in ("1", "2"):
        a, b, t = f[f"hada_w{i}_a"].float(), f[f"hada_w{i}_b"].float(), f.get(f"hada_t{i}")
        if t is not None:
            out.append(_cp_weight(t.float(), a, b))
        else:
            out.append((a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:]))
    return out


def _lokr_parts(f: dict):
    w1 = f["lokr_w1"].float() if "lokr_w1" in f else f["lokr_w1_a"].float() @ f["lokr_w1_b"].float()
    if "lokr_w2" in f:
        w2 = f["lokr_w2"].float()
    elif "lokr_t2" in f:
        w2 = _cp_weight(f["lokr_t2"].float(), f["lokr_w2_a"].float(), f["lokr_w2_b"].float())
    else:
        a, b = f["lokr_w2_a"].float(), f["lokr_w2_b"].float()
        w2 = (a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])
    return w1, w2


def delta_shape(module: LoraModule) -> tuple[int, ...]:
    """The shape of ``lora_delta`` before reshaping, from the factors' shapes alone (no arithmetic)."""
    f = module.factors
    if module.kind == "loha":
        a, b, t = tuple(f["hada_w1_a"].shape), tuple(f["hada_w1_b"].shape), f.get("hada_t1")
        return (a[1], b[1], *tuple(t.shape)[2:]) if t is not None else (a[0], *b[1:])
    if module.kind == "lokr":
        w1 = tuple(f["lokr_w1"].shape) if "lokr_w1" in f else (f["lokr_w1_a"].shape[0], f["lokr_w1_b"].shape[1])
        if "lokr_w2" in f:
            w2 = tuple(f["lokr_w2"].shape)
        elif "lokr_t2" in f:
            w2 = (f["lokr_w2_a"].shape[1], f["lokr_w2_b"].shape[1], *tuple(f["lokr_t2"].shape)[2:])
        else:
            w2 = (f["lokr_w2_a"].shape[0], *tuple(f["lokr_w2_b"].shape)[1:])
        return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
    up, down = tuple(module.up.shape), tuple(module.down.shape)
    if module.mid is not None:
        return (up[0], down[1], *tuple(module.mid.shape)[2:])
    if len(down) == 4 and down[2:] != (1, 1):
        return (up[0], *down[1:])
    return (up[0], down[1])


def fits(module: LoraModule, weight_shape) -> bool:
    """True if the module's weight change can be written into a layer of ``weight_shape``."""
    shape, weight_shape = tuple(delta_shape(module)), tuple(weight_shape)
    if module.dora_scale is not None and math.prod(module.dora_scale.shape) not in weight_shape[:2]:
        return False  # a DoRA magnitude per input column (or output row) of this layer
    # Same output channels and size: a 1x1-conv LoRA on a linear layer or a kernel stored flattened.
    return shape == weight_shape or (shape[0] == weight_shape[0] and math.prod(shape) == math.prod(weight_shape))


def _raw_delta(module: LoraModule):
    """The module's weight change before scaling and reshaping (float32)."""
    import torch

    if module.kind == "loha":  # LyCORIS LoHa: (w1a @ w1b) * (w2a @ w2b)
        p1, p2 = _loha_parts(module.factors)
        return p1 * p2
    if module.kind == "lokr":  # LyCORIS LoKr: kron(w1, w2)
        w1, w2 = _lokr_parts(module.factors)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2)
    up, down = module.up.float(), module.down.float()
    if module.mid is not None:  # LoCon/Tucker: up (1x1) . mid (kh x kw) . down (1x1)
        return torch.einsum("abhw,oa,bi->oihw", module.mid.float(), up.flatten(1), down.flatten(1))
    if down.dim() == 4 and down.shape[2:] != (1, 1):  # LoCon conv: the kernel lives in down, up is 1x1
        return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
    return up.flatten(1) @ down.flatten(1)


def lora_delta(module: LoraModule, weight_shape, dtype=None, base=None):
    """The module's weight change times its scale (float32), shaped like the target layer's weight.

    A DoRA module's change depends on the layer's base weight, so `base` (the weight before any LoRA) is
    required for one. The LoRA weight (A1111's multiplier) multiplies the result, as in A1111."""
    delta = _raw_delta(module)
    if tuple(delta.shape) != tuple(weight_shape):
        if not fits(module, weight_shape):
            raise ValueError(f"delta {tuple(delta.shape)} does not fit weight {tuple(weight_shape)}")
        delta = delta.reshape(weight_shape)  # 1x1 conv on a linear layer, flattened conv kernels
    delta = delta.mul_(module.scale)
    if module.dora_scale is not None:
        if base is None:
            raise ValueError("a DoRA module needs the layer's base weight")
        delta = dora_delta(delta, base, module.dora_scale)
    return delta if dtype is None else delta.to(dtype)


def dora_delta(delta, base, magnitude):
    """DoRA's change: ``(base + delta)`` with each input column (over output channels and kernel) rescaled to
    ``magnitude``, minus ``base``. A magnitude of shape ``[out, 1, ...]`` (LyCORIS's ``wd_on_out``) rescales
    output rows instead."""
    import torch

    base = base.to(torch.float32)
    merged = base + delta
    magnitude = magnitude.to(device=merged.device, dtype=torch.float32)
    flat_ones = [1] * (merged.dim() - 1)
    if magnitude.dim() >= 2 and magnitude.shape[0] == merged.shape[0] and magnitude.shape[0] != 1:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *flat_ones)
        magnitude = magnitude.reshape(merged.shape[0], *flat_ones)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, merged.shape[1], *flat_ones[1:])
        magnitude = magnitude.reshape(1, merged.shape[1], *flat_ones[1:])
    return merged * (magnitude / norm) - base
