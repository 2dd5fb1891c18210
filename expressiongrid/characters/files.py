"""Character files (TOML) and bare model files as characters; listing a characters folder.

A character file (see ``docs/characters.md`` and the commented examples in ``characters/``)::

    label = "Anna (LoRA 0.8)"
    text = "<lora:anna_v2:0.8>, anna"
    [[lora]]
    file = "anna_v2.safetensors"   # relative to this file
    weight = 0.8
    [source]
    civitai = 123456

Reading character files imports no torch; only a bare ``.pt`` file needs it (to tell a LoRA from an
embedding, read through the safe unpickler).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from expressiongrid.characters.formats import (MODEL_SUFFIXES, PICKLE_SUFFIXES, check_model_file,
                                               read_safetensors_header)
from expressiongrid.characters.model import Character, EmbeddingRef, LoraRef
from expressiongrid.characters.sidecars import read_sidecars, sidecar_paths
from expressiongrid.characters.tokens import validate_token
from expressiongrid.errors import CharacterError
from expressiongrid.limits import MAX_NETWORK_WEIGHT

LORA_TAG = re.compile(r"<(lora|lyco):([^>:]+)(?::([^>]*))?>")
_TOP_KEYS = {"id", "label", "text", "lora", "embedding", "source", "tags"}
# [tags]: what the study compares characters by; "kind" (LoRA / embedding) is filled in from the files.
_TAG_KEYS = {"group", "creator"}
_LORA_KEYS = {"file", "weight", "unet_weight", "te_weight", "name"}
_EMBEDDING_KEYS = {"file", "token"}
_SOURCE_KEYS = {"civitai", "hf", "revision", "sha256", "url", "model", "version"}


def load_character(path_or_toml: str | Path) -> Character:
    """Read a ``.toml`` character file, or make a character from a bare LoRA/embedding file.

    A bare file gets sensible defaults: label and id = file stem; a LoRA's text is ``<lora:STEM:1>`` plus the
    trigger words kohya stored in its metadata; an embedding's token (and text) is the lower-cased stem.
    """
    path = Path(path_or_toml)
    if path.suffix.lower() == ".toml":
        if not path.exists():
            raise CharacterError(f"{path}: character file not found")
        from expressiongrid.paths import read_text_file

        try:
            data = tomllib.loads(read_text_file(path, "character file", CharacterError))
        except tomllib.TOMLDecodeError as exc:
            raise CharacterError(f"{path}: invalid TOML: {exc}") from exc
        return character_from_dict(data, base_dir=path.parent, default_id=path.stem, where=str(path), file=path)
    if path.suffix.lower() in MODEL_SUFFIXES:
        return character_from_model_file(path)
    raise CharacterError(
        f"{path}: not a character: expected a .toml character file or a model file ({', '.join(MODEL_SUFFIXES)})"
    )


def _as_tables(value, what: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"file": value}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (dict, str)) for v in value):
        return [{"file": v} if isinstance(v, str) else v for v in value]
    raise CharacterError(f"{where}: '{what}' must be a file name, a table or an array of tables ([[{what}]])")


def _unknown(keys, allowed, where, what) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise CharacterError(f"{where}: unknown key(s) {', '.join(extra)} in {what}; allowed: {', '.join(sorted(allowed))}")


def _number(table: dict, key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CharacterError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value) or abs(value) > MAX_NETWORK_WEIGHT:
        raise CharacterError(f"{where}: {key} must be a number from -{MAX_NETWORK_WEIGHT:g} to "
                             f"{MAX_NETWORK_WEIGHT:g}, got {value!r}")
    return float(value)


def character_from_dict(data: dict, base_dir: Path, default_id: str, where: str, file: Path | None = None) -> Character:
    """Build a ``Character`` from parsed TOML; relative file names are relative to ``base_dir``."""
    _unknown(data, _TOP_KEYS, where, "the character file")
    cid = str(data.get("id", default_id))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", cid) or cid == "reference":
        raise CharacterError(f"{where}: id {cid!r} must be letters, digits, '_', '-', '.' (and not 'reference')")
    loras = []
    for i, table in enumerate(_as_tables(data.get("lora", []), "lora", where)):
        at = f"{where}: lora #{i + 1}"
        _unknown(table, _LORA_KEYS, at, "[[lora]]")
        if "file" not in table:
            raise CharacterError(f"{at}: missing 'file'")
        weight = _number(table, "weight", 1.0, at)
        unet = _number(table, "unet_weight", weight, at)
        te = _number(table, "te_weight", weight, at)
        loras.append(LoraRef(base_dir / str(table["file"]), unet_weight=unet, te_weight=te, name=str(table.get("name", ""))))
    embeddings = []
    for i, table in enumerate(_as_tables(data.get("embedding", []), "embedding", where)):
        at = f"{where}: embedding #{i + 1}"
        _unknown(table, _EMBEDDING_KEYS, at, "[[embedding]]")
        if "file" not in table:
            raise CharacterError(f"{at}: missing 'file'")
        ref = EmbeddingRef(base_dir / str(table["file"]), token=str(table.get("token", "")))
        validate_token(ref.token, at)
        embeddings.append(ref)
    source = data.get("source")
    if source is not None:
        if not isinstance(source, dict):
            raise CharacterError(f"{where}: [source] must be a table (civitai = VERSION_ID or hf = \"REPO/FILE\")")
        _unknown(source, _SOURCE_KEYS, where, "[source]")
        version = source.get("civitai")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise CharacterError(f"{where}: [source] civitai must be civitai's model-version id, a whole number "
                                 f"such as 123456, got {version!r}")
    tags = data.get("tags", {})
    if not isinstance(tags, dict):
        raise CharacterError(f'{where}: [tags] must be a table, e.g. group = "celebrity", creator = "someone"')
    _unknown(tags, _TAG_KEYS, where, "[tags]")
    for key, value in tags.items():
        if not isinstance(value, str) or not value.strip():
            raise CharacterError(f"{where}: [tags] {key} must be a non-empty string, got {value!r}")
    text = data.get("text")
    if text is None:
        text = default_text(loras, embeddings)
    if not isinstance(text, str):
        raise CharacterError(f"{where}: text must be a string")
    _check_tags(text, loras, where)
    label = data.get("label", cid)
    if not isinstance(label, str) or not label.strip():
        raise CharacterError(f"{where}: label must be a non-empty string (the column's name in the grid), "
                             f"got {label!r}")
    notes = ()
    n_files = len(loras) + len(embeddings)
    if source and source.get("civitai") is not None and n_files != 1:
        notes = (f"{where}: [source] civitai = {source['civitai']} is not written into the image metadata: it names "
                 f"one file and the character has {n_files}; put civitai's id beside each file instead "
                 "(NAME.civitai.info, as Civitai Helper writes it)",)
    return Character(id=cid, label=label, loras=loras, embeddings=embeddings, text=text, source=source, file=file,
                     tags={k: v.strip() for k, v in tags.items()}, notes=notes)


def _fmt(w: float) -> str:
    return f"{w:g}"


def default_text(loras: list[LoraRef], embeddings: list[EmbeddingRef], trigger_words: list[str] | None = None) -> str:
    """A1111-style text: ``<lora:name:w>`` tags, trigger words, embedding tokens."""
    parts = []
    for ref in loras:
        weights = _fmt(ref.te_weight) if ref.te_weight == ref.unet_weight else f"{_fmt(ref.te_weight)}:{_fmt(ref.unet_weight)}"
        parts.append(f"<lora:{ref.name}:{weights}>")
    parts += list(trigger_words or [])
    parts += [e.token for e in embeddings]
    return ", ".join(parts)


def _check_tags(text: str, loras: list[LoraRef], where: str) -> None:
    """A ``<lora:..>`` tag in the text must name a listed LoRA with the same weights (the files decide)."""
    by_name = {r.name: r for r in loras}
    for m in LORA_TAG.finditer(text):
        name, args = m.group(2), [a for a in (m.group(3) or "").split(":") if a and "=" not in a]
        ref = by_name.get(name)
        if ref is None:
            raise CharacterError(
                f"{where}: text has {m.group(0)} but no [[lora]] with name {name!r} (known: {', '.join(by_name) or 'none'})"
            )
        try:
            te = float(args[0]) if args else 1.0
            unet = float(args[1]) if len(args) > 1 else te
        except ValueError as exc:
            raise CharacterError(f"{where}: bad weight in {m.group(0)}") from exc
        if abs(te - ref.te_weight) > 1e-9 or abs(unet - ref.unet_weight) > 1e-9:
            raise CharacterError(
                f"{where}: {m.group(0)} says weight {te:g}/{unet:g} but [[lora]] {name!r} has "
                f"{ref.te_weight:g}/{ref.unet_weight:g}; make them agree"
            )


def kohya_trigger_words(metadata: dict[str, str]) -> list[str]:
    """Trigger words from kohya/sd-scripts metadata: ``modelspec.trigger_phrase``, else the instance words of the
    DreamBooth-style dataset folders (``10_anna woman`` -> ``anna woman``)."""
    phrase = (metadata.get("modelspec.trigger_phrase") or "").strip()
    if phrase:
        return [p.strip() for p in phrase.split(",") if p.strip()]
    words = []
    try:
        dirs = json.loads(metadata.get("ss_dataset_dirs") or "{}")
    except ValueError:
        dirs = {}
    for name in dirs if isinstance(dirs, dict) else []:
        m = re.match(r"^\d+_(.+)$", str(name))
        if m and m.group(1).strip() and m.group(1).strip() not in words:
            words.append(m.group(1).strip())
    return words


def identify(path: str | Path) -> tuple[str, dict[str, str]]:
    """``("lora" | "embedding", metadata)`` for a model file; raises ``CharacterError`` if it is neither."""
    from expressiongrid.characters.lora import parse_layout

    path = check_model_file(path)
    if path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)
        keys = list(header.tensors)
        shapes = {k: header.shape(k) for k in keys}
        metadata = header.metadata
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        from expressiongrid.characters.formats import load_pickle

        data = load_pickle(path)
        if not isinstance(data, dict):
            raise CharacterError(f"{path}: unrecognised content ({type(data).__name__})")
        keys, metadata = list(data), {}
        shapes = {k: tuple(v.shape) for k, v in data.items() if hasattr(v, "shape")}
        if "string_to_param" in data:
            return "embedding", metadata
    else:
        raise CharacterError(f"{path}: unsupported file type {path.suffix!r}")
    try:
        parse_layout(keys, path, shapes)
        return "lora", metadata
    except CharacterError as lora_error:
        if "not a LoRA file" not in str(lora_error):
            raise
    if "string_to_param" in keys or any(k.startswith("string_to_param") for k in keys) or len(keys) == 1 or (
        "clip_l" in keys and "clip_g" in keys
    ):
        return "embedding", metadata
    raise CharacterError(f"{path}: neither a LoRA nor an embedding (keys such as {keys[:3]})")


def character_from_model_file(path: str | Path) -> Character:
    """A bare LoRA/embedding file as a character, with defaults read from the file and its sidecars.

    As A1111's Extra Networks card does: the weight is the ``"preferred weight"`` of A1111's ``NAME.json`` (else
    1), the trigger words its ``"activation text"``, else Civitai Helper's trained words (``NAME.civitai.info``),
    else the ones kohya stored in the file. A known civitai model-version id links the file in the metadata.
    """
    path = Path(path)
    kind, metadata = identify(path)
    sidecars = read_sidecars(path)
    source = {"civitai": sidecars.civitai_version_id} if sidecars.civitai_version_id is not None else None
    cid = re.sub(r"[^A-Za-z0-9_.\-]+", "-", path.stem).strip("-.") or "character"
    notes = ()
    if sidecars.negative_text.strip():
        notes = (f"{sidecar_paths(path)[0]}: its \"negative text\" {sidecars.negative_text.strip()!r} is not added to "
                 "the negative prompt (A1111's card adds it when clicked); write it into the study's negative prompt "
                 "if the column needs it",)
    if kind == "lora":
        weight = sidecars.preferred_weight if sidecars.preferred_weight is not None else 1.0
        ref = LoraRef(path, unet_weight=weight, te_weight=weight)
        words = sidecars.trigger_words or kohya_trigger_words(metadata)
        return Character(cid, path.stem, loras=[ref], text=default_text([ref], [], words), source=source, file=path,
                         notes=notes)
    ref = EmbeddingRef(path)
    text = ", ".join([ref.token, *sidecars.trigger_words]) if sidecars.activation_text.strip() else ref.token
    return Character(cid, path.stem, embeddings=[ref], text=text, source=source, file=path, notes=notes)


@dataclass
class ListedEntry:
    """One line of ``characters list``: a character file or a model file not used by one."""

    path: Path
    kind: str  # "character", "lora", "embedding" or "invalid"
    label: str
    id: str = ""
    detail: str = ""


def list_characters(directory: str | Path) -> list[ListedEntry]:
    """Character files and model files in ``directory`` (recursively), each with its kind and label.

    Model files that a character file already uses are listed under that character, not again.
    Broken files are listed as ``invalid`` with the reason instead of stopping the listing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CharacterError(f"{directory}: not a folder")
    entries: list[ListedEntry] = []
    used: set[Path] = set()
    for toml in sorted(directory.rglob("*.toml")):
        try:
            ch = load_character(toml)
        except CharacterError as exc:
            entries.append(ListedEntry(toml, "invalid", toml.stem, detail=str(exc)))
            continue
        used.update(p.resolve() for p in ch.files())
        files = ", ".join(p.name + ("" if p.is_file() else " (missing)") for p in ch.files()) or "no files"
        entries.append(ListedEntry(toml, "character", ch.label, ch.id, f"{ch.kind}: {files}"))
    for model in sorted(p for p in directory.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()):
        if model.resolve() in used:
            continue
        try:
            ch = character_from_model_file(model)
            entries.append(ListedEntry(model, ch.kind, ch.label, ch.id, ch.text))
        except CharacterError as exc:
            entries.append(ListedEntry(model, "invalid", model.stem, detail=str(exc)))
    return entries
