"""A1111 "parameters" text (infotext): write it for cells and grids, read it back.

The text A1111's PNG Info tab and civitai read::

    <prompt>
    Negative prompt: <negative prompt>          (omitted when empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 1, Size: 512x512, Model hash: ..., Model: ..., ...

Keys follow A1111's order; values containing ``,``, ``:`` or a newline are JSON-quoted like A1111 does.
Civitai links resources by two extra keys that it reads as raw JSON (not quoted):
``Hashes: {"model": "<AutoV2>", "lora:NAME": "...", "embed:NAME": "..."}`` and
``Civitai resources: [{"type":"checkpoint","modelVersionId":123}, ...]`` (only when version ids are known).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence

from expressiongrid import __version__
from expressiongrid.samplers import split_sampler_name

__all__ = [
    "format_parameters",
    "parse_parameters",
    "parse_name_hashes",
    "format_name_hashes",
    "grid_axes_params",
    "grid_seed_params",
    "read_grid_seeds",
    "merge_hashes",
    "merge_civitai_resources",
    "quote",
]

# A1111's fixed order (processing.create_infotext); keys we never set are kept so `extra` can fill them
# in A1111's place ("Schedule type" given as extra still lands after "Sampler").
_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
    "Init image hash", "RNG", "Tiling",
)
_RAW_JSON_KEYS = ("Hashes", "Civitai resources")  # civitai parses these as bare JSON


def quote(value: Any) -> str:
    """A1111's value quoting: JSON-quote text that contains ``,``, ``:`` or a newline.

    Also text that starts with a double quote, which A1111 would otherwise unquote on reading.
    """
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and not text.startswith('"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def format_name_hashes(hashes: Mapping[str, str]) -> str:
    """``{"anna": "abc"}`` -> ``anna: abc`` (A1111's Lora/TI hashes; names lose ``:`` and ``,``)."""
    parts = []
    for name, short in hashes.items():
        clean = str(name).replace(":", "").replace(",", "")
        parts.append(f"{clean}: {short}")
    return ", ".join(parts)


def parse_name_hashes(text: str) -> dict[str, str]:
    """Inverse of `format_name_hashes`: ``"a: 123, b: 456"`` -> ``{"a": "123", "b": "456"}``."""
    out: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, short = part.partition(":")
        if sep:
            out[name.strip()] = short.strip()
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def format_parameters(
    prompt: str,
    negative_prompt: str = "",
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    schedule_type: str | None = None,
    model_hash: str | None = None,
    model: str | None = None,
    vae_hash: str | None = None,
    vae: str | None = None,
    clip_skip: int = 1,
    rng: str | None = None,
    lora_hashes: Mapping[str, str] | None = None,
    ti_hashes: Mapping[str, str] | None = None,
    hashes: Mapping[str, str] | None = None,
    civitai_resources: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> str:
    """The A1111 ``parameters`` text for one image (or a grid, with axes in `extra`).

    `prompt` is written as given (``<lora:...>`` tags included, as A1111 does). `lora_hashes`/`ti_hashes`
    map names to A1111 short hashes; `hashes` maps civitai keys (``model``, ``vae``, ``lora:NAME``,
    ``embed:NAME``) to AutoV2 hashes; `civitai_resources` lists ``{"type", "modelVersionId", ...}``
    entries. `rng` is written only when it is not A1111's default ``GPU``; Clip skip only when > 1.
    `extra` keys follow in insertion order (an `extra` key A1111 orders itself keeps A1111's place).
    """
    params: dict[str, Any] = {key: None for key in _ORDER}
    params.update(
        {
            "Steps": steps,
            "Sampler": sampler,
            "Schedule type": schedule_type,
            "CFG scale": cfg_scale,
            "Seed": seed,
            "Size": f"{width}x{height}",
            "Model hash": model_hash,
            "Model": model,
            "VAE hash": vae_hash,
            "VAE": vae,
            "Clip skip": clip_skip if clip_skip and clip_skip > 1 else None,
            "RNG": rng if rng and rng.upper() != "GPU" else None,
        }
    )
    if lora_hashes:
        params["Lora hashes"] = format_name_hashes(lora_hashes)
    if ti_hashes:
        params["TI hashes"] = format_name_hashes(ti_hashes)
    for key, value in (extra or {}).items():
        params[key] = value
    if hashes:
        params["Hashes"] = dict(hashes)
    if civitai_resources:
        params["Civitai resources"] = [dict(r) for r in civitai_resources]
    params["Version"] = version or f"expressiongrid {__version__}"

    fields = []
    for key, value in params.items():
        if value is None:
            continue
        if key in _RAW_JSON_KEYS:
            fields.append(f"{key}: {_json(value)}")
        elif str(value) == key:
            fields.append(key)
        else:
            fields.append(f"{key}: {quote(value)}")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(fields))
    return "\n".join(lines).strip()


# A study stores its own two axes by kind ("expressions", "characters"); everywhere an axis is named (grid keys,
# axis titles, the viewer) it goes by its axis type's name. Every other axis is stored under that name.
_STUDY_KINDS = {"expressions": "Expression", "characters": "Character"}


def axis_type_name(kind: str) -> str:
    """The axis type name (``"Expression"``, ``"Steps"``) of an axis stored as `kind` (``"expressions"``)."""
    return _STUDY_KINDS.get(kind, kind)


def study_axis_kind(type_name: str) -> str:
    """The kind a study stores an axis type under: ``axis_type_name``'s inverse."""
    return {name: kind for kind, name in _STUDY_KINDS.items()}.get(type_name, type_name)


def grid_axes_params(axes: Iterable[tuple[str, str, str]], fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """A1111's grid keys: ``Script: X/Y/Z plot``, ``X Type``, ``X Values`` (and Fixed X Values), ...

    `axes` are ``(letter, axis type name, values as typed)``; Nothing axes are left out like A1111 does.
    `fixed` maps a letter to the seeds that replaced -1 values.
    """
    out: dict[str, str] = {"Script": "X/Y/Z plot"}
    for letter, type_name, values_text in axes:
        if type_name == "Nothing":
            continue
        out[f"{letter} Type"] = type_name
        out[f"{letter} Values"] = values_text
        if fixed and letter in fixed:
            out[f"Fixed {letter} Values"] = fixed[letter]
    return out


# This tool's seed policies, which A1111's grid keys cannot say (A1111 writes neither): extra keys, which
# A1111, civitai and other readers of the text pass over. The letters are the grid's axes (X = columns).
VARY_SEEDS_KEY = "Vary seeds"
SEEDS_PER_CELL_KEY = "Seeds per cell"
_GRID_LETTERS = {"columns": "X", "rows": "Y", "pages": "Z"}


def grid_seed_params(seed_policy: str, vary: Sequence[str] = (), seeds_per_cell: int = 1) -> dict[str, str]:
    """The keys that let a grid's text remake its seeds: ``Vary seeds: "X, Y"`` for ``seed_policy = "vary"``
    (A1111's "Vary seeds for X/Y/Z"), ``Seeds per cell: 4`` for ``"per-cell"``; none for fixed seeds."""
    if seed_policy == "vary" and vary:
        return {VARY_SEEDS_KEY: ", ".join(_GRID_LETTERS[a] for a in _GRID_LETTERS if a in vary)}
    if seed_policy == "per-cell" and seeds_per_cell > 1:
        return {SEEDS_PER_CELL_KEY: str(seeds_per_cell)}
    return {}


def read_grid_seeds(params: Mapping[str, str]) -> dict[str, Any]:
    """The study's seed settings from ``grid_seed_params``'s keys in parsed parameters: ``{}`` (fixed
    seeds), ``{"seed_policy": "vary", "vary": [...]}`` or ``{"seed_policy": "per-cell", "seeds_per_cell": n}``.
    ``ValueError`` naming the key for a value this version cannot read."""
    by_letter = {letter: axis for axis, letter in _GRID_LETTERS.items()}
    out: dict[str, Any] = {}
    if VARY_SEEDS_KEY in params:
        letters = [v.strip().upper() for v in str(params[VARY_SEEDS_KEY]).split(",") if v.strip()]
        if not letters or any(letter not in by_letter for letter in letters):
            raise ValueError(f"{VARY_SEEDS_KEY}: {params[VARY_SEEDS_KEY]}: expected grid axes X, Y and/or Z")
        out = {"seed_policy": "vary", "vary": [by_letter[letter] for letter in "XYZ" if letter in letters]}
    if SEEDS_PER_CELL_KEY in params:
        text = str(params[SEEDS_PER_CELL_KEY]).strip()
        if out or not text.isdigit() or int(text) < 2:
            raise ValueError(f"{SEEDS_PER_CELL_KEY}: {text}: expected a whole number of 2 or more, without "
                             f"{VARY_SEEDS_KEY}")
        out = {"seed_policy": "per-cell", "seeds_per_cell": int(text)}
    return out


def merge_hashes(*many: Mapping[str, str] | None) -> dict[str, str]:
    """Union of civitai ``Hashes`` dicts, first occurrence of a key wins (one grid lists every resource)."""
    out: dict[str, str] = {}
    for hashes in many:
        for key, value in (hashes or {}).items():
            out.setdefault(key, value)
    return out


def merge_civitai_resources(*many: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Union of ``Civitai resources`` lists, one entry per (type, modelVersionId)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for resources in many:
        for resource in resources or []:
            key = (resource.get("type"), resource.get("modelVersionId"))
            if key in seen:
                continue
            seen.add(key)
            out.append(dict(resource))
    return out


# -- parsing ---------------------------------------------------------------------------------------------

# One "Key: value" pair of the last line, as A1111 reads it (quoted values may contain commas).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _take_raw_json(line: str) -> tuple[str, dict[str, Any]]:
    """Cut ``Hashes: {...}`` and ``Civitai resources: [...]`` out of the line and decode them.

    The line is read pair by pair as ``_PARAM`` reads it (a quoted value is one value, so a label such as
    ``"a, Hashes: {}"`` is not mistaken for the key); text that is no pair is skipped a character at a
    time, as ``re.findall`` does.
    """
    found: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    kept: list[str] = []
    pos = 0
    while pos < len(line):
        pair = _PARAM.match(line, pos)
        if pair is None:
            kept.append(line[pos])
            pos += 1
            continue
        key = pair.group(1)
        start = pair.start(2)
        if key in _RAW_JSON_KEYS and key not in found and line[start:start + 1] in ("[", "{"):
            try:
                value, end = decoder.raw_decode(line, start)
            except ValueError:
                pass  # not JSON: leave it to the ordinary key/value reading
            else:
                found[key] = value
                rest = line[end:]
                pos = end + (len(rest) - len(rest.lstrip()))
                pos += 1 if line.startswith(",", pos) else 0
                continue
        kept.append(line[pos:pair.end()])
        pos = pair.end()
    return "".join(kept), found


def parse_parameters(text: str) -> dict[str, Any]:
    """Read an A1111 ``parameters`` text into a dict, following A1111's rules.

    ``Prompt`` and ``Negative prompt`` hold the text lines; the last line is read as ``Key: value`` pairs
    when it has at least three of them (otherwise it belongs to the prompt). Quoted values are unquoted,
    ``WxH`` values are also split into ``<key>-1`` / ``<key>-2``; values stay strings as in A1111, except
    ``Hashes`` (a dict) and ``Civitai resources`` (a list), which are decoded JSON. A1111's defaults are
    filled in for keys that change the image: ``Clip skip`` 1, ``RNG`` GPU, ``Schedule type`` Automatic;
    an old-style sampler name such as ``DPM++ 2M Karras`` is split into sampler and schedule type.
    """
    result: dict[str, Any] = {}
    *lines, last = text.strip().split("\n")
    stripped_last, raw_json = _take_raw_json(last)
    if len(_PARAM.findall(stripped_last)) < 3:
        lines.append(last)
        stripped_last, raw_json = "", {}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result["Prompt"] = "\n".join(prompt)
    result["Negative prompt"] = "\n".join(negative)
    for key, value in _PARAM.findall(stripped_last):
        value = _unquote(value) if value else value
        m = _IMAGE_SIZE.match(value)
        if m is not None:
            result[f"{key}-1"] = m.group(1)
            result[f"{key}-2"] = m.group(2)
        result[key] = value
    result.update(raw_json)
    result.setdefault("Clip skip", "1")
    result.setdefault("RNG", "GPU")
    sampler = result.get("Sampler", "")
    if "Schedule type" not in result:
        base, suffix = split_sampler_name(sampler) if isinstance(sampler, str) else (sampler, None)
        if suffix is not None:
            result["Sampler"], result["Schedule type"] = base, suffix
        else:
            result["Schedule type"] = "Automatic"
    return result
