"""A1111 image parameters (PNG Info) to a study file: ``expressiongrid import SOURCE --out STUDY.toml``.

SOURCE is an image A1111 (or this tool, or civitai) wrote — PNG ``parameters`` text chunk, or JPEG/WebP EXIF
UserComment — or a text file holding such parameters. An X/Y/Z plot grid's parameters (``Script: X/Y/Z plot``,
``X Type``, ``X Values``, ...) become the study's columns, rows and pages; the other values are those of the
grid's first cell, which is what A1111 writes.

What carries over: prompt and negative prompt (``<lora:...>`` tags and embedding words included), sampler and
schedule type, steps, CFG scale, seed (and the seed policy of a grid made here), size, clip skip, noise source
(``RNG``), the checkpoint and VAE (found in the configured folders by hash, else by name) and LoRAs/embeddings (by
name, else by hash, renamed in the prompt to the file found). Everything else is listed in
`ImportResult.unresolved`: a model not found, a setting this tool does not have (hires fix, variation seeds, ...).
Nothing is dropped without saying so.

Imports no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.config import Config
from expressiongrid.config import load as load_config
from expressiongrid.errors import SamplerError, UsageError
from expressiongrid.output.infotext import SEEDS_PER_CELL_KEY, VARY_SEEDS_KEY, read_grid_seeds
from expressiongrid.paths import read_text_file
from expressiongrid.text import csv_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Keys read into the study, or that only describe what is read (hashes, version, the grid's own keys).
_CONSUMED = {
    "Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Size-1", "Size-2",
    "Model hash", "Model", "VAE hash", "VAE", "Clip skip", "RNG", "Lora hashes", "TI hashes", "Hashes",
    "Civitai resources", "Version", "User", "Script", VARY_SEEDS_KEY, SEEDS_PER_CELL_KEY,
    *(f"{letter} {what}" for letter in "XYZ" for what in ("Type", "Values", "Fixed Values")),
    *(f"Fixed {letter} Values" for letter in "XYZ"),
}
# Keys this tool lacks, at the value that changes nothing (A1111's default).
_DEFAULTS = {"Emphasis": "Original", "ENSD": "0", "Eta": "1.0"}
_NOISE = {"CPU": "cpu", "GPU": "gpu"}
_AXIS_SLOTS = (("X", "columns"), ("Y", "rows"), ("Z", "pages"))
_LORA_TAG = re.compile(r"<(lora|lyco):([^:>]+)((?::[^>]*)?)>")


@dataclass
class ImportResult:
    """The study file's text and what could not be carried over (one line each, for the user)."""

    toml: str
    study: dict
    unresolved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_source(path: str | Path) -> str:
    """The A1111 parameters text of an image (PNG Info / EXIF UserComment) or a text file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: file not found")
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        from expressiongrid.output.images import read_parameters

        text = read_parameters(path)  # an unreadable image is a UsageError naming it
        if not text:
            raise UsageError(f"{path}: the image has no A1111 parameters (no PNG 'parameters' text, no EXIF "
                             "UserComment); it was not written by A1111, or its metadata was stripped")
        return text
    # A pipe, a device, a folder, a file of many MiB or one that is not UTF-8 is refused by name.
    text = read_text_file(path, "parameters file")
    if not text.strip():
        raise UsageError(f"{path}: empty; expected A1111 parameters (prompt, then 'Steps: ..., Sampler: ...')")
    return text


def import_source(path: str | Path, config: Config | None = None) -> ImportResult:
    """Read SOURCE (image or text file) and turn its parameters into a study (see `import_parameters`)."""
    path = Path(path)
    return import_parameters(read_source(path), name=path.stem, where=str(path), config=config)


def import_parameters(text: str, *, name: str = "imported", where: str = "<parameters>",
                      config: Config | None = None) -> ImportResult:
    """The study that remakes the image (or X/Y/Z grid) these A1111 parameters describe."""
    from expressiongrid.output.infotext import parse_parameters

    config = config or load_config()
    params = parse_parameters(text.replace("\r\n", "\n"))  # a parameters file saved on Windows
    if "Steps" not in params:
        raise UsageError(f"{where}: not A1111 parameters: no 'Steps: ..., Sampler: ...' line after the prompt")
    unresolved: list[str] = []
    notes: list[str] = []
    prompt, negative = params.get("Prompt", ""), params.get("Negative prompt", "")
    prompt = _resolve_loras(prompt, params, config, unresolved)
    prompt, negative = _resolve_embeddings(prompt, negative, params, config, unresolved)

    model = {"source": _checkpoint(params, config, unresolved)}
    vae = _vae(params, config, unresolved)
    if vae:
        model["vae"] = vae
    clip_skip = _int(params, "Clip skip", 1, where)
    if clip_skip != 1:
        model["clip_skip"] = clip_skip

    sampling = {**_sampler(params, unresolved), "steps": _int(params, "Steps", 20, where),
                "cfg_scale": _float(params, "CFG scale", 7.0, where), "seed": _int(params, "Seed", -1, where),
                "width": _int(params, "Size-1", 512, where), "height": _int(params, "Size-2", 512, where)}
    if "Size" in params and "Size-1" not in params:
        unresolved.append(f"Size: {params['Size']}: expected WIDTHxHEIGHT such as 512x768; the study uses "
                          f"{sampling['width']}x{sampling['height']}")
    rng = str(params.get("RNG", "GPU")).upper()
    if rng in _NOISE:
        sampling["noise_source"] = _NOISE[rng]
        if rng == "GPU":
            notes.append("the source used GPU noise (A1111's default RNG): the study asks for noise_source = \"gpu\", "
                         "which needs CUDA; \"cpu\" runs anywhere but makes other images")
    else:
        sampling["noise_source"] = "gpu"
        unresolved.append(f"RNG: {params['RNG']}: this tool makes CPU or GPU noise only; the study uses \"gpu\", "
                          "so the images will differ")

    _seeds(params, sampling, unresolved, notes)
    study: dict = {"name": _study_name(name), "model": model, "sampling": sampling,
                   "prompt": {"positive": prompt, "negative": negative}}
    _axes(params, study, config, unresolved)
    for key, value in params.items():
        if key in _CONSUMED or key.endswith(("-1", "-2")) and key[:-2] in params:
            continue
        if key in _DEFAULTS and str(value) == _DEFAULTS[key]:
            continue
        unresolved.append(f"{key}: {value}: not a setting of this tool; left out")
    return ImportResult(_to_toml(study, where, unresolved), study, unresolved, notes)


# --- models ---------------------------------------------------------------------------------------------------

def _study_name(stem: str) -> str:
    from expressiongrid.paths import safe_filename

    return safe_filename(stem, fallback="imported")


def _checkpoint(params: dict, config: Config, unresolved: list[str]) -> str:
    name, short = params.get("Model"), params.get("Model hash")
    if name == "tiny" and not short:
        return "tiny"
    found = config.find_by_hash("checkpoints", short) if short else None
    if found is None and name:
        try:
            found = config.find_checkpoint(name)
        except UsageError as exc:
            unresolved.append(f"Model: {exc}")
            return name
    if found is not None:
        return _name_in_folder(config, "checkpoints", found)
    if not name and not short:
        unresolved.append("Model: the parameters name no checkpoint; the study uses the built-in tiny model")
        return "tiny"
    what = f"{name or ''}{f' (hash {short})' if short else ''}".strip()
    unresolved.append(f"Model: {what}: not found ({config.describe_search('checkpoints')}); put the file there or "
                      "edit [model] source")
    return name or short


def _vae(params: dict, config: Config, unresolved: list[str]) -> str | None:
    name, short = params.get("VAE"), params.get("VAE hash")
    if not name and not short:
        return None
    found = config.find_by_hash("vaes", short) if short else None
    if found is None and name:
        found = config.find_file("vaes", name)
    if found is not None:
        return _name_in_folder(config, "vaes", found)
    unresolved.append(f"VAE: {name or short}: not found ({config.describe_search('vaes')})")
    return name or short


def _name_in_folder(config: Config, kind: str, path: Path) -> str:
    """The file's name below its configured folder when that name finds it again, else its full path."""
    for folder in config.search_folders(kind):
        try:
            rel = path.relative_to(folder).as_posix()
        except ValueError:
            continue
        finder = config.find_checkpoint if kind == "checkpoints" else (lambda n: config.find_file(kind, n))
        try:
            if finder(rel) == path:
                return rel
        except UsageError:
            break
    return str(path)


def _name_hashes(params: dict, key: str) -> dict[str, str]:
    from expressiongrid.output.infotext import parse_name_hashes

    value = params.get(key)
    return parse_name_hashes(value) if isinstance(value, str) else {}


def _resolve_loras(prompt: str, params: dict, config: Config, unresolved: list[str]) -> str:
    """Keep each ``<lora:NAME...>`` tag whose NAME is a configured file; rename it to the file found by its
    ``Lora hashes`` entry otherwise; list the rest."""
    hashes = _name_hashes(params, "Lora hashes")
    renames: dict[str, str] = {}
    for m in _LORA_TAG.finditer(prompt):
        name = m.group(2)
        if name in renames or config.find_file("loras", name) is not None:
            continue
        short = hashes.get(name.replace(":", "").replace(",", ""))
        found = config.find_by_hash("loras", short) if short else None
        if found is not None:
            renames[name] = found.stem
            continue
        unresolved.append(f"LoRA {name}{f' (hash {short})' if short else ''}: not found "
                          f"({config.describe_search('loras')})")
        renames[name] = name
    return _LORA_TAG.sub(lambda m: f"<{m.group(1)}:{renames.get(m.group(2), m.group(2))}{m.group(3)}>", prompt)


def _resolve_embeddings(prompt: str, negative: str, params: dict, config: Config,
                        unresolved: list[str]) -> tuple[str, str]:
    """Each embedding A1111 used (``TI hashes``) must be a configured file: by name, else by hash (the word is
    then renamed in the prompts to the file's stem)."""
    for name, short in _name_hashes(params, "TI hashes").items():
        if config.find_file("embeddings", name) is not None:
            continue
        found = config.find_by_hash("embeddings", short)
        if found is None:
            unresolved.append(f"embedding {name} (hash {short}): not found ({config.describe_search('embeddings')})")
            continue
        word = re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)
        prompt, negative = word.sub(found.stem, prompt), word.sub(found.stem, negative)
    return prompt, negative


# --- sampler, numbers ------------------------------------------------------------------------------------------

def _sampler(params: dict, unresolved: list[str]) -> dict:
    """``sampler`` and (A1111 1.9+) ``schedule_type`` as the source wrote them, checked against the engine."""
    from expressiongrid.samplers import get_sampler

    sampler = str(params.get("Sampler", "Euler a"))
    schedule = str(params.get("Schedule type", "Automatic"))
    try:
        get_sampler(sampler, schedule)
    except SamplerError as exc:
        unresolved.append(f"Sampler: {exc}")
    return {"sampler": sampler, **({"schedule_type": schedule} if schedule != "Automatic" else {})}


def _int(params: dict, key: str, default: int, where: str) -> int:
    value = params.get(key)
    if value in (None, ""):
        return default
    try:  # int() first: a long number through float() would come back as another number
        return int(value)
    except ValueError:
        pass
    try:
        return int(float(value)) if float(value).is_integer() else int(value)
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"{where}: {key}: {value!r} is not a whole number") from exc


def _float(params: dict, key: str, default: float, where: str) -> float:
    value = params.get(key)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise UsageError(f"{where}: {key}: {value!r} is not a number") from exc


# --- X/Y/Z plot axes ---------------------------------------------------------------------------------------------

def _seeds(params: dict, sampling: dict, unresolved: list[str], notes: list[str]) -> None:
    """The seed policy a grid made here writes (``Vary seeds``, ``Seeds per cell``); an A1111 grid's text
    cannot say whether "Vary seeds" was on, which the user is told."""
    try:
        sampling.update(read_grid_seeds(params))
    except ValueError as exc:
        unresolved.append(f"{exc}; left out (the study uses one seed for every cell)")
    if params.get("Script") == "X/Y/Z plot" and not str(params.get("Version", "")).startswith("expressiongrid"):
        notes.append(f"A1111 does not write \"{VARY_SEEDS_KEY}\" into a grid's parameters: if the grid was made "
                     "with it, set seed_policy = \"vary\" and vary = [\"columns\", ...] in the study by hand, "
                     "or the other cells get other seeds than the grid's")


def _axes(params: dict, study: dict, config: Config, unresolved: list[str]) -> None:
    from expressiongrid.study.study import SUPPORTED_A1111_AXES, canonical_axis_kind

    script = params.get("Script")
    is_grid = script == "X/Y/Z plot"
    if script is not None and not is_grid:
        unresolved.append(f"Script: {script}: import remakes X/Y/Z plots only; the study makes the single image "
                          "these parameters describe")
    axis_keys = [f"{letter} Type" for letter, _ in _AXIS_SLOTS if f"{letter} Type" in params]
    if axis_keys and not is_grid:
        unresolved.append(f"{', '.join(axis_keys)}: without \"Script: X/Y/Z plot\" these are no grid axes here; "
                          "left out (add the axes to the study by hand)")
    for letter, slot in _AXIS_SLOTS:
        kind = params.get(f"{letter} Type") if is_grid else None
        if not kind or kind == "Nothing":
            if slot != "pages":
                study[slot] = {"axis": "Nothing"}
            continue
        # A1111 writes the seeds it drew for -1 values as "Fixed X Values": those remake the grid.
        values = params.get(f"Fixed {letter} Values") or params.get(f"{letter} Values", "")
        canonical = canonical_axis_kind(kind)
        if canonical in ("characters", "expressions"):
            unresolved.append(f"{letter} axis {kind}: {values}: this tool's own axis, which import does not "
                              "rebuild: run its study or xyz command again (`expressiongrid runs show RUN_DIR` names "
                              "the study); left out")
            if slot != "pages":
                study[slot] = {"axis": "Nothing"}
            continue
        if canonical not in SUPPORTED_A1111_AXES:
            unresolved.append(f"{letter} axis {kind}: {values}: not an axis this tool runs "
                              f"({', '.join(SUPPORTED_A1111_AXES)}); left out")
            if slot != "pages":
                study[slot] = {"axis": "Nothing"}
            continue
        if canonical == "Checkpoint name":
            for value in _split_values(values):
                try:
                    found = config.find_checkpoint(value)
                except UsageError as exc:
                    unresolved.append(f"{letter} axis Checkpoint name: {exc}")
                    continue
                if found is None:
                    unresolved.append(f"{letter} axis Checkpoint name {value}: not found "
                                      f"({config.describe_search('checkpoints')})")
        study[slot] = {"axis": canonical, "values": values}


def _split_values(text: str) -> list[str]:
    return [v for v in csv_split(text) if v]


# --- TOML ------------------------------------------------------------------------------------------------------

def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def _to_toml(study: dict, where: str, unresolved: list[str]) -> str:
    lines = [f"# Imported from {where} by `expressiongrid import`.",
             "# Run it with: expressiongrid run THIS_FILE --dry-run"]
    if unresolved:
        lines.append("# Not carried over (fix these by hand or accept the difference):")
        lines += [f"#   - {' '.join(item.split())}" for item in unresolved]
    lines.append(f"name = {_toml_value(study['name'])}")
    for table in ("model", "sampling", "prompt", "columns", "rows", "pages"):
        if table not in study:
            continue
        lines.append("")
        lines.append(f"[{table}]")
        for key, value in study[table].items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
