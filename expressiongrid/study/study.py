"""Study files: read a TOML study, check every part of it, and resolve it into a ``Study``.

Validation collects every problem (file, key, what is expected) and raises them together in one
``StudyError`` before any model weights are touched, so a user fixes a study file in one pass instead of
one failed run per typo. Nothing here imports torch.

The file format is documented in ``docs/study-file.md``.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expressiongrid.characters import check_characters, load_character
from expressiongrid.characters.model import Character
from expressiongrid.characters.tokens import token_problems
from expressiongrid.config import BUILTIN_DEFAULTS, Config
from expressiongrid.config import load as load_config
from expressiongrid.engine.compiled import COMPILE_CHOICES
from expressiongrid.engine.loading import DTYPES, ModelSpec, expected_text_width
from expressiongrid.engine.noise import NOISE_SOURCES
from expressiongrid.errors import ExpressionGridError, StudyError, UsageError
from expressiongrid.limits import (MAX_CELLS, MAX_CLIP_SKIP, MAX_MARGIN, MAX_NETWORK_WEIGHT, MAX_PROMPT_CHARS,
                                   MAX_SEEDS_PER_CELL, MAX_SIDE, MAX_STEPS)
from expressiongrid.samplers import get_sampler
from expressiongrid.study.axes import AXIS_TYPES
from expressiongrid.text import csv_join, csv_split, slug

PLACEHOLDERS = ("expression", "character")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

SEED_POLICIES = ("fixed", "vary", "per-cell")
VARY_AXES = ("columns", "rows", "pages")
GRID_FORMATS = ("png", "jpeg", "webp")

# Axes the planner can apply besides expressions and characters (A1111 labels): those whose axis type names
# the cell setting it changes (study/axes.py, AxisType.field).
SUPPORTED_A1111_AXES = tuple(t.name for t in AXIS_TYPES.values()
                             if t.field is not None and t.name not in ("Expression", "Character"))


@dataclass
class AxisValue:
    """One row, column or page: its id (stable, used in keys), legend label and typed value.

    For expressions ``value`` is the prompt text and ``info`` carries the target action units and notes;
    for characters ``value`` is the ``Character`` (or None for the reference column).
    """

    id: str
    label: str
    value: Any
    info: dict = field(default_factory=dict)


@dataclass
class Axis:
    """An axis of the grid. ``kind`` is "expressions", "characters" or an A1111 axis label."""

    kind: str
    values: list[AxisValue]
    raw: str | None = None  # the value text as the user typed it (goes into the grid infotext)
    drawn: tuple[int, ...] = ()  # positions of Seed values drawn for -1 (A1111's "Fixed X Values")

    def with_drawn(self, seeds: Mapping[int, int]) -> Axis:
        """This axis with the seeds an earlier run drew for its -1 values (position -> seed)."""
        from expressiongrid.study.axes import axis_type, format_legend

        kind = axis_type(self.kind)
        values = list(self.values)
        for i, seed in seeds.items():
            if i in self.drawn and 0 <= i < len(values):
                values[i] = AxisValue(_value_id(seed), format_legend(kind, seed), seed, dict(values[i].info))
        return dataclasses.replace(self, values=values)

    @property
    def cost(self) -> float:
        """A1111's loop cost: expensive axes (checkpoints, then characters) become outer loops."""
        from expressiongrid.output.infotext import axis_type_name
        from expressiongrid.study.axes import axis_type

        return axis_type(axis_type_name(self.kind)).cost

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Sampling:
    sampler: str = BUILTIN_DEFAULTS["sampler"]  # a study without one takes the configuration's [defaults] sampler
    schedule_type: str | None = None  # A1111 1.9+'s separate setting; None = Automatic
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    seed_policy: str = "fixed"
    vary: tuple[str, ...] = ()
    seeds_per_cell: int = 1
    noise_source: str = "cpu"
    batch_size: int | None = None


@dataclass
class OutputOptions:
    dir: str | None = None
    title: str | None = None
    grid_formats: tuple[str, ...] = ("png",)
    upload_copy: str | None = "jpeg"  # an upload-sized JPEG/WebP beside each grid, or None
    margin: int = 0
    max_cells_per_page: int | None = None
    font: str | None = None  # a font file drawn first for grid labels (output/fonts.py has the chain after it)
    axis_titles: bool = False  # name what varies along rows and columns ("Expression", "Character")
    caption: bool | str = False  # a line under the grid: model, sampler, steps, CFG, seed (or this text)


@dataclass
class Study:
    """A validated, resolved study: everything the planner needs, no files left to read."""

    name: str
    path: Path | None
    base_dir: Path
    model: ModelSpec
    sampling: Sampling
    prompt: str
    negative_prompt: str
    rows: Axis
    columns: Axis
    pages: Axis | None = None
    output: OutputOptions = field(default_factory=OutputOptions)
    reference_text: str = ""
    characters: list = field(default_factory=list)  # Character objects of the columns, reference excluded
    # Character id -> problems with its files (corrupt, wrong model family, ...). Such a column is not a
    # reason to refuse the whole study: it fails on its own, recorded and marked in the grid, and the rest
    # of the run goes on (``load_study(..., strict=True)`` refuses instead).
    column_problems: dict[str, list[str]] = field(default_factory=dict)
    # The user configuration: where LoRAs named by <lora:NAME:..> tags and embedding words are looked up.
    user_config: Config | None = None

    def drawn_axes(self) -> dict[str, Axis]:
        """The axes ("rows", "columns", "pages") with Seed values drawn for -1."""
        return {slot: axis for slot, axis in (("rows", self.rows), ("columns", self.columns), ("pages", self.pages))
                if axis is not None and axis.drawn}

    def with_drawn_seeds(self, seeds: Mapping[str, Mapping[int, int]]) -> Study:
        """This study with the seeds an earlier run drew for -1 axis values (slot -> position -> seed), so a
        resumed run makes the same cells instead of drawing new ones."""
        if not seeds:
            return self
        changes = {slot: getattr(self, slot).with_drawn(values) for slot, values in seeds.items()
                   if getattr(self, slot, None) is not None}
        return dataclasses.replace(self, **changes)

    def info(self) -> dict:
        """JSON-ready description stored with each run (``Store.study_info``)."""

        def axis_info(axis: Axis | None):
            if axis is None:
                return None
            values = []
            for v in axis.values:
                item = {"id": v.id, "label": v.label}
                if axis.kind == "expressions":
                    item["text"] = v.value
                elif axis.kind == "characters":
                    item["character_id"] = v.id
                    if hasattr(v.value, "kind"):
                        item["kind"] = v.value.kind
                        item["tags"] = dict(v.value.tags)
                else:
                    item["value"] = v.value if isinstance(v.value, (int, float, str, type(None))) else str(v.value)
                item.update({k: val for k, val in v.info.items() if k not in item})
                values.append(item)
            info = {"kind": axis.kind, "raw": axis.raw, "values": values}
            if axis.drawn:
                info["drawn"] = list(axis.drawn)
            return info

        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "model": vars(self.model).copy(),
            "sampling": {**vars(self.sampling), "vary": list(self.sampling.vary)},
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "reference_text": self.reference_text,
            "rows": axis_info(self.rows),
            "columns": axis_info(self.columns),
            "pages": axis_info(self.pages),
            "output": {**vars(self.output), "grid_formats": list(self.output.grid_formats)},
        }


# ----------------------------------------------------------------------------------------------------
# Problem collection


class _Problems:
    """Collects "file: key: what is expected" lines; raise once at the end."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.source}: {key}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            raise StudyError(f"{self.source}: {n} problem{'s' if n != 1 else ''} in the study", self.items)


_KNOWN_KEYS = {
    "": {"name", "title", "model", "sampling", "prompt", "rows", "columns", "pages", "output"},
    "model": {"source", "vae", "clip_skip", "dtype", "device", "compile"},
    "sampling": {"sampler", "schedule_type", "steps", "cfg_scale", "width", "height", "seed", "seed_policy", "vary",
                 "seeds_per_cell", "noise_source", "batch_size"},
    "prompt": {"positive", "negative", "reference"},
    "axis": {"axis", "set", "only", "items", "values", "files", "loras", "embeddings", "reference",
             "reference_label"},
    "output": {"dir", "title", "grid_formats", "upload_copy", "margin", "max_cells_per_page", "font", "axis_titles",
               "caption"},
}


# The keys each kind of axis reads (besides `axis`); every A1111 axis but Nothing reads `values`.
_AXIS_KEYS = {"expressions": {"set", "items", "values", "only"},
              "characters": {"files", "items", "values", "loras", "embeddings", "reference", "reference_label"},
              "Nothing": set()}


def _check_keys(table: dict, known: set[str], prefix: str, problems: _Problems) -> None:
    for key in table:
        if key not in known:
            problems.add(f"{prefix}{key}", f"unknown key; expected one of {', '.join(sorted(known))}")


def _get(table: dict, key: str, kind, default, prefix: str, problems: _Problems, *, check=None, expect=""):
    """Read ``table[key]`` as ``kind``; record a problem (and return the default) when it does not fit."""
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and check is not None and not check(value):
        ok = False
    if not ok:
        problems.add(f"{prefix}{key}", f"expected {expect or _kind_name(kind)}, got {value!r}")
        return default
    return value


def _kind_name(kind) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    return names.get(kind, str(kind))


def _slug(text: str) -> str:
    return slug(text, fallback="x", max_length=48)


# ----------------------------------------------------------------------------------------------------


def load_study(path: str | Path, *, strict: bool = False, user_config: Config | None = None) -> Study:
    """Read and validate a study TOML file; every problem is reported at once in one ``StudyError``.

    Problems inside character files (a corrupt LoRA, an embedding for another model family) are kept in
    ``Study.column_problems`` so only that column fails; with ``strict`` they are study problems too.
    """
    from expressiongrid.paths import read_text_file

    path = Path(path)
    text = read_text_file(path, "study file", StudyError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from None
    return study_from_dict(data, base_dir=path.parent, source=str(path), path=path, strict=strict,
                           user_config=user_config)


def study_from_dict(data: dict, *, base_dir: str | Path = ".", source: str = "<study>",
                    path: Path | None = None, check_files: bool = True, strict: bool = False,
                    user_config: Config | None = None) -> Study:
    """Validate a study given as a dict (a parsed TOML file, or built by ``xyz``) and resolve it.

    ``user_config``: where tags and embedding words are looked up (default: ``config.load()``).
    """
    base_dir = Path(base_dir)
    problems = _Problems(source)
    _check_keys(data, _KNOWN_KEYS[""], "", problems)

    name = _get(data, "name", str, path.stem if path else "study", "", problems)
    model = _read_model(_table(data, "model", problems), base_dir, problems, check_files)
    sampling = _read_sampling(_table(data, "sampling", problems), problems)
    prompt_t = _table(data, "prompt", problems)
    _check_keys(prompt_t, _KNOWN_KEYS["prompt"], "prompt.", problems)
    prompt = _get(prompt_t, "positive", str, "", "prompt.", problems)
    if "positive" not in prompt_t:
        problems.add("prompt.positive", "missing; expected the prompt text, e.g. "
                     "\"closeup of woman facing viewer, [hair, neck, eyes, lips: {expression}: 0.2], {character}\"")
    negative = _get(prompt_t, "negative", str, "", "prompt.", problems)
    reference_text = _get(prompt_t, "reference", str, "", "prompt.", problems)

    folders = user_config if user_config is not None else load_config()
    rows = _read_axis(data, "rows", base_dir, problems, check_files, reference_text, folders)
    columns = _read_axis(data, "columns", base_dir, problems, check_files, reference_text, folders)
    pages = (_read_axis(data, "pages", base_dir, problems, check_files, reference_text, folders)
             if "pages" in data else None)
    output = _read_output(_table(data, "output", problems), problems)
    output.title = output.title or _get(data, "title", str, None, "", problems)
    if output.font:
        font = Path(output.font).expanduser()
        font = font if font.is_absolute() else base_dir / font
        if check_files and not font.is_file():
            problems.add("output.font", f"no font file at {font}; give a .ttf, .otf or .ttc file")
        output.font = str(font)

    axes = {"rows": rows, "columns": columns, "pages": pages}
    _check_placeholders(prompt, negative, axes, problems)
    _check_axis_combination(axes, sampling, problems)
    _check_prompts(prompt, negative, axes, sampling, problems)
    _check_cell_count(axes, sampling, problems)
    column_problems: dict[str, list[str]] = {}
    characters = _check_characters(axes, model, problems, column_problems)
    if strict:
        axis_name = next((n for n, a in axes.items() if a is not None and a.kind == "characters"), "columns")
        for messages in column_problems.values():
            for message in messages:
                problems.add(f"{axis_name}.files", message)
    problems.raise_if_any()

    return Study(name=name, path=path, base_dir=base_dir, model=model, sampling=sampling, prompt=prompt,
                 negative_prompt=negative, rows=rows, columns=columns, pages=pages, output=output,
                 reference_text=reference_text, characters=characters, column_problems=column_problems,
                 user_config=folders)


def _table(data: dict, key: str, problems: _Problems) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.add(key, f"expected a table ([{key}]), got {value!r}")
        return {}
    return value


def _looks_like_path(source: str) -> bool:
    return source.endswith((".safetensors", ".ckpt", ".pt", ".bin")) or source.startswith((".", "/", "~")) \
        or "\\" in source


def _read_model(t: dict, base_dir: Path, problems: _Problems, check_files: bool) -> ModelSpec:
    _check_keys(t, _KNOWN_KEYS["model"], "model.", problems)
    user_config = load_config()
    source = _get(t, "source", str, "tiny", "model.", problems,
                  check=lambda s: bool(s.strip()), expect='"tiny", a hub id, a folder or a .safetensors file')
    vae = _get(t, "vae", str, None, "model.", problems) or None
    clip_skip = _get(t, "clip_skip", int, 1, "model.", problems, check=lambda v: 1 <= v <= MAX_CLIP_SKIP,
                     expect=f"an integer from 1 to {MAX_CLIP_SKIP} (1 = last layer, A1111's default)")
    dtype = _get(t, "dtype", str, user_config.default("dtype"), "model.", problems, check=lambda v: v in DTYPES,
                 expect=" or ".join(DTYPES))
    compile_ = _get(t, "compile", str, "auto", "model.", problems, check=lambda v: v in COMPILE_CHOICES,
                    expect=" or ".join(COMPILE_CHOICES))
    device = _get(t, "device", str, user_config.default("device"), "model.", problems)
    if check_files:
        source = _resolve_model_path(source, base_dir, "model.source", problems)
        if vae:
            vae = _resolve_model_path(vae, base_dir, "model.vae", problems, kind="vaes")
    return ModelSpec(source=source, vae=vae, clip_skip=clip_skip, dtype=dtype, device=device, compile=compile_)


def _resolve_model_path(source: str, base_dir: Path, key: str, problems: _Problems, kind: str = "checkpoints") -> str:
    """Resolve a model: a path relative to the study file, else a name in the configured folders (file name,
    stem or A1111 title ``name [hash]`` for checkpoints, stem for VAEs); hub ids and "tiny" pass through."""
    if source == "tiny":
        return source
    candidate = Path(source).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.exists():
        return _checked_checkpoint(candidate, key, problems, kind)
    user_config = load_config()
    try:
        found = user_config.find_checkpoint(source) if kind == "checkpoints" else user_config.find_file(kind, source)
    except UsageError as exc:
        problems.add(key, str(exc))
        return source
    if found is not None:
        return _checked_checkpoint(Path(found), key, problems, kind)
    search = user_config.describe_search(kind)
    if source.rstrip().endswith("]") or not (_looks_like_path(source) or Path(source).suffix or "/" in source):
        problems.add(key, f"{source!r} not found: no {kind} file of that name ({search}); or give a path "
                          "relative to the study file")
    elif _looks_like_path(source) or Path(source).suffix:
        what = "a checkpoint file or diffusers folder" if kind == "checkpoints" else "a VAE file"
        problems.add(key, f"file not found: {candidate} (expected {what}; paths are relative to the study file), "
                          f"nor a {kind} file of that name ({search})")
    return source  # a hub id such as "runwayml/stable-diffusion-v1-5"


def _checked_checkpoint(path: Path, key: str, problems: _Problems, kind: str) -> str:
    """``path`` as a string, after refusing a checkpoint file whose first bytes show it cannot be one."""
    if kind == "checkpoints" and path.is_file():
        from expressiongrid.engine.loading import checkpoint_problem

        problem = checkpoint_problem(path)
        if problem:
            problems.add(key, f"{path}: {problem}")
    return str(path)


def _read_sampling(t: dict, problems: _Problems) -> Sampling:
    p = "sampling."
    _check_keys(t, _KNOWN_KEYS["sampling"], p, problems)
    s = Sampling()
    s.sampler = _get(t, "sampler", str, load_config().default("sampler"), p, problems)
    s.schedule_type = _get(t, "schedule_type", str, None, p, problems) or None
    _check_sampler(s.sampler, s.schedule_type, p + ("schedule_type" if s.schedule_type else "sampler"), problems)
    s.steps = _get(t, "steps", int, s.steps, p, problems, check=lambda v: 1 <= v <= MAX_STEPS,
                   expect=f"an integer from 1 to {MAX_STEPS}")
    s.cfg_scale = _get(t, "cfg_scale", float, s.cfg_scale, p, problems, check=_finite_within(0, 100),
                       expect="a number from 0 to 100")
    for key in ("width", "height"):
        setattr(s, key, _get(t, key, int, getattr(s, key), p, problems, check=lambda v: 8 <= v <= MAX_SIDE and v % 8 == 0,
                             expect=f"a multiple of 8 from 8 to {MAX_SIDE}"))
    s.seed = _get(t, "seed", int, s.seed, p, problems, check=lambda v: -1 <= v < 2**32,
                  expect="an integer from 0 to 4294967295, or -1 for a random seed fixed for the run")
    s.seed_policy = _get(t, "seed_policy", str, s.seed_policy, p, problems, check=lambda v: v in SEED_POLICIES,
                         expect=" or ".join(f'"{x}"' for x in SEED_POLICIES))
    vary = t.get("vary", [])
    if isinstance(vary, str):
        vary = [vary]
    if not isinstance(vary, list) or any(v not in VARY_AXES for v in vary):
        problems.add(p + "vary", f"expected a list of {', '.join(VARY_AXES)}, got {t.get('vary')!r}")
        vary = []
    s.vary = tuple(v for v in VARY_AXES if v in vary)
    s.seeds_per_cell = _get(t, "seeds_per_cell", int, 1, p, problems, check=lambda v: 1 <= v <= MAX_SEEDS_PER_CELL,
                            expect=f"an integer from 1 to {MAX_SEEDS_PER_CELL}")
    s.noise_source = _get(t, "noise_source", str, "cpu", p, problems, check=lambda v: v in NOISE_SOURCES,
                          expect=" or ".join(NOISE_SOURCES))
    s.batch_size = _get(t, "batch_size", int, None, p, problems, check=lambda v: v >= 1, expect="a positive integer")
    if s.seed_policy == "vary" and not s.vary:
        problems.add(p + "vary", 'seed_policy "vary" needs the axes to vary along, e.g. vary = ["rows"]')
    if s.seed_policy != "vary" and s.vary:
        problems.add(p + "seed_policy", f'vary = {list(s.vary)} needs seed_policy = "vary"')
    if s.seed_policy == "per-cell" and s.seeds_per_cell < 2 and "seeds_per_cell" not in t:
        problems.add(p + "seeds_per_cell", 'seed_policy "per-cell" needs seeds_per_cell = 2 or more')
    if s.seed_policy != "per-cell" and s.seeds_per_cell > 1:
        problems.add(p + "seed_policy", 'seeds_per_cell > 1 needs seed_policy = "per-cell"')
    return s


def _check_sampler(name: str, schedule_type: str | None, key: str, problems: _Problems) -> None:
    try:
        get_sampler(name, schedule_type)
    except ExpressionGridError as exc:
        problems.add(key, str(exc))


def _read_output(t: dict, problems: _Problems) -> OutputOptions:
    p = "output."
    _check_keys(t, _KNOWN_KEYS["output"], p, problems)
    o = OutputOptions()
    o.dir = _get(t, "dir", str, None, p, problems)
    o.title = _get(t, "title", str, None, p, problems)
    formats = t.get("grid_formats", ["png"])
    if isinstance(formats, str):
        formats = [formats]
    if not isinstance(formats, list) or not formats or any(f not in GRID_FORMATS for f in formats):
        problems.add(p + "grid_formats", f"expected a list from {', '.join(GRID_FORMATS)}, got {t.get('grid_formats')!r}")
        formats = ["png"]
    o.grid_formats = tuple(formats)
    upload = t.get("upload_copy", "jpeg")
    if upload in (False, "none", ""):
        upload = None
    if upload is not None and upload not in ("jpeg", "webp"):
        problems.add(p + "upload_copy", f'expected "jpeg", "webp" or false, got {upload!r}')
        upload = None
    o.upload_copy = upload
    o.margin = _get(t, "margin", int, 0, p, problems, check=lambda v: 0 <= v <= MAX_MARGIN,
                     expect=f"pixels from 0 to {MAX_MARGIN}")
    o.max_cells_per_page = _get(t, "max_cells_per_page", int, None, p, problems, check=lambda v: v >= 1,
                                expect="a positive integer")
    o.font = _get(t, "font", str, None, p, problems)
    o.axis_titles = _get(t, "axis_titles", bool, False, p, problems)
    o.caption = _get(t, "caption", (bool, str), False, p, problems, expect="true, false or a text")
    return o


# ----------------------------------------------------------------------------------------------------
# Axes


def canonical_axis_kind(name: str) -> str | None:
    """``"expressions"``, ``"characters"`` or the canonical A1111 axis label; None if unknown."""
    from expressiongrid.output.infotext import study_axis_kind
    from expressiongrid.study.axes import AxisError, axis_type

    try:
        t = axis_type(name)
    except AxisError:
        return None
    return study_axis_kind(t.name)


def _read_axis(data: dict, name: str, base_dir: Path, problems: _Problems, check_files: bool,
               reference_text: str, folders: Config | None = None) -> Axis:
    t = data.get(name)
    if t is None:
        problems.add(name, f"missing; expected a [{name}] table with an axis, e.g. axis = "
                           f"\"{'expressions' if name == 'rows' else 'characters'}\"")
        return Axis("Nothing", [AxisValue("0", "", None)])
    if not isinstance(t, dict):
        problems.add(name, f"expected a table ([{name}]), got {t!r}")
        return Axis("Nothing", [AxisValue("0", "", None)])
    p = f"{name}."
    _check_keys(t, _KNOWN_KEYS["axis"], p, problems)
    kind_text = _get(t, "axis", str, None, p, problems)
    if kind_text is None:
        problems.add(p + "axis", "missing; expected \"expressions\", \"characters\" or an A1111 axis "
                                 f"({', '.join(SUPPORTED_A1111_AXES)})")
        return Axis("Nothing", [AxisValue("0", "", None)])
    kind = canonical_axis_kind(kind_text)
    if kind is None or (kind not in ("expressions", "characters") and kind not in SUPPORTED_A1111_AXES):
        what = "unknown axis" if kind is None else "axis not supported by the runner:"
        problems.add(p + "axis", f"{what} {kind_text!r}; expected \"expressions\", \"characters\" or one of "
                                 f"{', '.join(SUPPORTED_A1111_AXES)}")
        return Axis("Nothing", [AxisValue("0", "", None)])
    takes = _AXIS_KEYS.get(kind, {"values"})
    for key in sorted(set(t) & _KNOWN_KEYS["axis"] - {"axis"} - takes):
        problems.add(p + key, f"the {kind_text} axis does not read {key}; it takes "
                              + (", ".join(sorted(takes)) if takes else "no other key"))
    if kind == "expressions":
        axis = _expressions_axis(t, p, base_dir, problems, check_files)
    elif kind == "characters":
        axis = _characters_axis(t, p, base_dir, problems, check_files, folders or load_config())
    else:
        before = len(problems.items)
        axis = _a1111_axis(kind, t, p, problems)
        if len(problems.items) > before:  # its values were refused: "no values" would only repeat that
            return axis
        if kind == "Checkpoint name" and check_files:
            for v in axis.values:
                v.value = _resolve_model_path(str(v.value), base_dir, p + "values", problems)
    if not axis.values and kind != "Nothing":
        problems.add(p + "values", "the axis has no values; expected at least one")
    ids = [v.id for v in axis.values]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes and kind in ("expressions", "characters"):
        problems.add(p + ("items" if "items" in t else "values"), f"duplicate ids {', '.join(dupes)}; ids must be unique")
    return axis


def _expressions_axis(t: dict, p: str, base_dir: Path, problems: _Problems, check_files: bool) -> Axis:
    values: list[AxisValue] = []
    if "set" in t:
        set_path = _get(t, "set", str, None, p, problems)
        if set_path:
            values = _load_expression_set(set_path, base_dir, p + "set", problems, check_files)
    for i, item in enumerate(t.get("items", []) if isinstance(t.get("items", []), list) else []):
        key = f"{p}items[{i}]"
        if isinstance(item, str):
            values.append(AxisValue(_slug(item), item, item))
        elif isinstance(item, dict):
            text = item.get("text", item.get("prompt"))
            if not isinstance(text, str) or not text.strip():
                problems.add(key + ".text", "missing; expected the expression's prompt text")
                continue
            eid = item.get("id") or _slug(text)
            label = item.get("label") or text
            info = {k: v for k, v in item.items() if k not in ("id", "label", "text", "prompt")}
            values.append(AxisValue(str(eid), str(label), text, info))
        else:
            problems.add(key, f"expected a string or a table {{id, label, text}}, got {item!r}")
    if "items" in t and not isinstance(t["items"], list):
        problems.add(p + "items", f"expected a list, got {t['items']!r}")
    if "values" in t:
        raw = t["values"]
        texts = [x for x in _split_values(raw, p + "values", problems) if x]
        if len(texts) == 1 and _names_expression_set(texts[0], base_dir):
            # A1111-style value text naming a set, e.g. --y "Expression: seed-study"
            values.extend(_load_expression_set(texts[0], base_dir, p + "values", problems, check_files))
        else:
            values.extend(AxisValue(_slug(x), x, x) for x in texts)
    if "set" not in t and "items" not in t and "values" not in t:
        problems.add(p + "set", "expected an expression set file (set = \"expressions/seed-study.toml\"), "
                                "or inline items = [...]")
    only = t.get("only")
    if only is not None:
        if not isinstance(only, list) or not all(isinstance(x, str) for x in only):
            problems.add(p + "only", f"expected a list of expression ids, got {only!r}")
        else:
            by_id = {v.id: v for v in values}
            missing = [x for x in only if x not in by_id]
            if missing:
                problems.add(p + "only", f"unknown expression ids {', '.join(missing)}; "
                                         f"known: {', '.join(by_id) or '(none)'}")
            values = [by_id[x] for x in only if x in by_id]
    return Axis("expressions", values)


def _split_values(raw, key: str, problems: _Problems) -> list[str]:
    if isinstance(raw, list) and all(isinstance(x, (str, int, float)) for x in raw):
        return [str(x) for x in raw]
    if isinstance(raw, str):
        return csv_split(raw)
    problems.add(key, f"expected a list of values or A1111 value text, got {raw!r}")
    return []


def _load_expression_set(set_name: str, base_dir: Path, key: str, problems: _Problems,
                         check_files: bool) -> list[AxisValue]:
    """Expressions from an expression-set file or built-in set name (``seed-study``), via ``study.expressions``."""
    from expressiongrid.study.expressions import find_expression_set, load_expression_set

    found = find_expression_set(set_name, base_dir=base_dir)
    if found is not None and Path(found).resolve() == Path(problems.source).resolve():
        # A set name like "seed-study" must not find the study file of the same name beside it.
        found = find_expression_set(set_name, base_dir=None)
    if found is None or not Path(found).is_file():
        problems.add(key, f"expression set not found: {set_name!r} (expected a .toml file relative to the study "
                          "file, or a built-in set name such as \"seed-study\"; `expressiongrid expressions list` "
                          "shows them)")
        return []
    try:
        expression_set = load_expression_set(found)
    except ExpressionGridError as exc:
        problems.add(key, str(exc))
        for problem in getattr(exc, "problems", []) or []:
            problems.add(key, problem)
        return []
    return [AxisValue(e.id, e.label, e.prompt, {"action_units": list(e.action_units), "notes": e.notes,
                                                 "set": str(found)})
            for e in expression_set.expressions]


def _names_expression_set(text: str, base_dir: Path) -> bool:
    from expressiongrid.study.expressions import find_expression_set

    found = find_expression_set(text, base_dir=base_dir)
    return found is not None and Path(found).is_file()


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


_MODEL_FILE_SUFFIXES = (".toml", ".safetensors", ".pt", ".ckpt", ".bin")


def _is_file_item(text: str) -> bool:
    """A characters value that names files (a path or a glob), not a column's text such as ``<lora:x:0.8>``."""
    return "<" not in text and (Path(text).suffix.lower() in _MODEL_FILE_SUFFIXES or any(c in text for c in "*?["))


def _characters_axis(t: dict, p: str, base_dir: Path, problems: _Problems, check_files: bool,
                     folders: Config) -> Axis:
    """Columns from character files, globs, inline characters, plain texts/tags, and globs over the model folders.

    ``files`` are character files or model files (globs relative to the study); ``loras`` / ``embeddings``
    are globs over the configured LoRA / embeddings folders (each match a bare-file character); ``items``
    are inline characters: a text (``"<lora:anna:0.8>, annachar"``, the tag's file found in the LoRA folders)
    or a table with a character file's keys; ``values`` is A1111 value text mixing ``reference``, files
    and texts.
    """
    values: list[AxisValue] = []
    reference = _get(t, "reference", bool, False, p, problems)
    files = t.get("files", [])
    if isinstance(files, str):
        files = [files]
    texts: list[tuple[str, Any]] = []  # (key, str | dict) inline characters, in order
    if "values" in t:
        # A1111-style value text (the xyz command): "reference, chars/anna.toml, <lora:bob:0.7>"
        items = [x for x in _split_values(t["values"], p + "values", problems) if x]
        reference = reference or any(x.lower() == "reference" for x in items)
        files = list(files) + [x for x in items if x.lower() != "reference" and _is_file_item(x)]
        texts += [("values", x) for x in items if x.lower() != "reference" and not _is_file_item(x)]
    items = t.get("items", [])
    if not isinstance(items, list) or not all(isinstance(x, (str, dict)) for x in items):
        problems.add(p + "items", "expected a list of inline characters: texts (\"<lora:anna:0.8>, annachar\") or "
                                  "tables with a character file's keys (label, text, lora, embedding, ...)")
        items = []
    texts += [("items", x) for x in items]
    if reference:
        label = _get(t, "reference_label", str, "reference", p, problems)
        values.append(AxisValue("reference", label, None, {"reference": True}))
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        problems.add(p + "files", f"expected a list of character files (.toml, .safetensors, .pt), got {files!r}")
        files = []
    paths: list[Path] = []
    for pattern in files:
        given = Path(pattern).expanduser()
        full = given if given.is_absolute() else base_dir / given
        # An existing file is taken as named, even with glob characters in its path (civitai downloads are
        # often in folders like "Anna [SD1.5]"); the study's own folder is never read as a pattern.
        if any(ch in pattern for ch in "*?[") and not full.exists():
            root = "" if given.is_absolute() else glob.escape(str(base_dir)) + os.sep
            matches = sorted(Path(m) for m in glob.glob(root + str(given)))
            if not matches and given.parent != Path("."):  # "Anna [SD1.5]/*.toml": a literal folder
                literal_dir = glob.escape(str(given.parent)) + os.sep + given.name
                matches = sorted(Path(m) for m in glob.glob(root + literal_dir))
            if not matches and check_files:
                problems.add(p + "files", f"no files match {pattern!r} (relative to {base_dir})")
            paths.extend(matches)
        elif full.exists() or not check_files:
            paths.append(full)
        else:
            problems.add(p + "files", f"character file not found: {full} (paths are relative to the study file)")
    for key, kind in (("loras", "lora"), ("embeddings", "embedding")):
        paths.extend(_folder_globs(t.get(key, []), kind, folders, p + key, problems, check_files))
    if check_files and paths:
        values.extend(_load_characters(paths, p + "files", problems))
    elif paths:
        values.extend(AxisValue(_slug(x.stem), x.stem, None, {"path": str(x)}) for x in paths)
    for index, (key, item) in enumerate(texts):
        value = _inline_character(item, f"{p}{key}[{index}]", base_dir, folders, problems, check_files)
        if value is not None:
            values.append(value)
    if not files and not reference and not texts and not t.get("loras") and not t.get("embeddings"):
        problems.add(p + "files", "expected character files (files = [\"characters/*.toml\"]), inline characters "
                                  "(items = [\"<lora:anna:0.8>\"]) and/or reference = true")
    return Axis("characters", values)


def _folder_globs(patterns, kind: str, folders: Config, key: str, problems: _Problems,
                  check_files: bool) -> list[Path]:
    """Files of the configured LoRA/embeddings folders whose path (relative to its folder) or name matches."""
    from expressiongrid.study.lookup import glob_files

    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(x, str) for x in patterns):
        problems.add(key, f"expected a list of file name patterns such as [\"anna*\"], got {patterns!r}")
        return []
    found: list[Path] = []
    for pattern in patterns:
        matches = glob_files(folders, kind + "s", pattern)
        if not matches and check_files:
            problems.add(key, f"no {kind} file matches {pattern!r}: {folders.describe_search(kind + 's')}")
        found.extend(m for m in matches if m not in found)
    return found


def _inline_character(item, key: str, base_dir: Path, folders: Config, problems: _Problems,
                      check_files: bool) -> AxisValue | None:
    """One inline character: a text, or a table with a character file's keys.

    A ``<lora:NAME:W>`` tag in its text that names none of its ``lora`` files is the file NAME in the
    configured LoRA folders at the tag's weights; an embedding word in its text is that embedding file.
    """
    from expressiongrid.characters.files import character_from_dict

    data = {"text": item, "label": item} if isinstance(item, str) else dict(item)
    text = data.get("text")
    default_id = _slug(str(data.get("label") or text or "character")) or "character"
    if check_files and isinstance(text, str):
        found = _files_named_in(text, data, folders)
        if isinstance(found, str):
            problems.add(key, found)
            return None
        data.update(found)
    try:
        ch = character_from_dict(data, base_dir, default_id, f"{problems.source}: {key}")
    except ExpressionGridError as exc:
        problems.add(key, str(exc).removeprefix(f"{problems.source}: {key}: "))
        return None
    return AxisValue(ch.id, ch.label, ch, {"inline": True})


def _tables(value) -> list | None:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        return None
    return [{"file": v} if isinstance(v, str) else v for v in value]


def _files_named_in(text: str, data: dict, folders: Config) -> dict | str:
    """``lora``/``embedding`` tables for the files the text's tags and words name (or one problem message)."""
    from expressiongrid.errors import PromptSyntaxError
    from expressiongrid.prompts import extract_networks
    from expressiongrid.study.lookup import embedding_words, lookup_lora

    loras, embeddings = _tables(data.get("lora", [])), _tables(data.get("embedding", []))
    if loras is None or embeddings is None or not all(isinstance(t, dict) for t in loras + embeddings):
        return {}  # malformed: character_from_dict says what is wrong
    try:
        _, tags = extract_networks(text)
    except PromptSyntaxError as exc:
        return str(exc)
    named = {str(t.get("name") or Path(str(t.get("file", ""))).stem) for t in loras}
    missing = []
    for tag in tags:
        if tag.kind != "lora" or tag.name in named:
            continue
        path, problem = lookup_lora(folders, tag.name, tag.raw)
        if problem:
            missing.append(problem)
            continue
        named.add(tag.name)
        loras.append({"file": str(path), "te_weight": tag.te_weight, "unet_weight": tag.unet_weight,
                      "name": tag.name})
    if missing:
        return "; ".join(missing)
    have = {Path(str(t.get("file", ""))).stem.lower() for t in embeddings}
    for _, path in embedding_words(folders, text):
        if path.stem.lower() not in have:
            embeddings.append({"file": str(path), "token": path.stem.lower()})
    return {"lora": loras, "embedding": embeddings}


def _load_characters(paths: list[Path], key: str, problems: _Problems) -> list[AxisValue]:
    values = []
    for path in paths:
        try:
            ch = load_character(path)
        except ExpressionGridError as exc:
            # The file exists but cannot be read as a character: its column fails alone (see column_problems).
            ch = Character(id=_slug(path.stem), label=path.stem, file=path)
            values.append(AxisValue(ch.id, ch.label, ch, {"path": str(path), "problems": [str(exc)]}))
            continue
        values.append(AxisValue(ch.id, ch.label, ch, {"path": str(path)}))
    return values


def _a1111_axis(kind: str, t: dict, p: str, problems: _Problems) -> Axis:
    raw = t.get("values")
    if raw is None and kind == "Nothing":
        raw = ""
    if raw is None:
        problems.add(p + "values", f"missing; expected A1111 value text for {kind}, e.g. values = \"5,7,9\"")
        return Axis(kind, [])
    if isinstance(raw, list):
        raw_text = csv_join(raw)
    elif isinstance(raw, (str, int, float)):
        raw_text = str(raw)
    else:
        problems.add(p + "values", f"expected value text or a list, got {raw!r}")
        return Axis(kind, [])
    from expressiongrid.study.axes import parse_axis

    try:
        parsed = parse_axis(kind, raw_text)
    except ExpressionGridError as exc:
        problems.add(p + "values", str(exc))
        return Axis(kind, [], raw_text)
    _check_axis_values(kind, parsed.values, p + "values", problems)
    return Axis(kind, [AxisValue(_value_id(v), label, v) for v, label in zip(parsed.values, parsed.labels)], raw_text,
                parsed.drawn)


def _finite_within(low: float, high: float):
    return lambda v: math.isfinite(v) and low <= v <= high


def _size_ok(value) -> bool:
    from expressiongrid.study.axes import AxisError, parse_size

    try:
        w, h = parse_size(value)
    except AxisError:
        return False
    return 8 <= w <= MAX_SIDE and 8 <= h <= MAX_SIDE


# What each applied axis accepts: the same ranges as the [sampling] keys, so a bad value is a study
# problem now instead of a failed cell after the model has loaded.
_AXIS_VALUE_RULES = {
    "Steps": (lambda v: 1 <= v <= MAX_STEPS, f"whole numbers from 1 to {MAX_STEPS}"),
    "Seed": (lambda v: 0 <= v < 2**32, "seeds from 0 to 4294967295, or -1 for a random one"),
    "CFG Scale": (_finite_within(0, 100), "numbers from 0 to 100"),
    "Clip skip": (lambda v: 1 <= v <= MAX_CLIP_SKIP, f"whole numbers from 1 to {MAX_CLIP_SKIP}"),
    "LoRA weight": (_finite_within(-MAX_NETWORK_WEIGHT, MAX_NETWORK_WEIGHT),
                    f"numbers from {-MAX_NETWORK_WEIGHT:g} to {MAX_NETWORK_WEIGHT:g}"),
    "Size": (_size_ok, f"sizes WIDTHxHEIGHT with multiples of 8 from 8 to {MAX_SIDE}, e.g. 512x768"),
}


def _check_axis_values(kind: str, values: list, key: str, problems: _Problems) -> None:
    rule = _AXIS_VALUE_RULES.get(kind)
    if rule is None:
        return
    ok, expect = rule
    bad = [v for v in values if not ok(v)]
    if bad:
        shown = ", ".join(str(v)[:24] for v in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        problems.add(key, f"{kind} axis: {shown} out of range; expected {expect}")


def _value_id(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------------------------------
# Cross-checks


def _check_placeholders(prompt: str, negative: str, axes: dict, problems: _Problems) -> None:
    used = set(_PLACEHOLDER_RE.findall(prompt)) | set(_PLACEHOLDER_RE.findall(negative))
    for unknown in sorted(used - set(PLACEHOLDERS)):
        problems.add("prompt.positive", f"unknown placeholder {{{unknown}}}; expected {{expression}} or {{character}}")
    kinds = {name: a.kind for name, a in axes.items() if a is not None}
    for placeholder, kind in (("expression", "expressions"), ("character", "characters")):
        has_axis = kind in kinds.values()
        if has_axis and placeholder not in used:
            problems.add("prompt.positive", f"an axis is {kind} but the prompt has no {{{placeholder}}} placeholder "
                                            f"to put the {placeholder} in")
        if placeholder in used and not has_axis:
            problems.add("prompt.positive", f"the prompt uses {{{placeholder}}} but no axis is {kind}")


def _check_cell_count(axes: dict, sampling: Sampling, problems: _Problems) -> None:
    """Refuse a study too large to plan before anything is expanded (counting is instant)."""
    count = sampling.seeds_per_cell
    for axis in axes.values():
        if axis is not None:
            count *= max(1, len(axis))
    if count > MAX_CELLS:
        sizes = " x ".join(str(len(a)) for a in axes.values() if a is not None)
        problems.add("study", f"{count:,} cells ({sizes}"
                     + (f" x {sampling.seeds_per_cell} seeds" if sampling.seeds_per_cell > 1 else "")
                     + f"); a study may have at most {MAX_CELLS:,}: split it into several studies")


def _check_axis_combination(axes: dict, sampling: Sampling, problems: _Problems) -> None:
    seen: dict[str, str] = {}
    for name, axis in axes.items():
        if axis is None or axis.kind in ("Nothing", "Prompt S/R"):  # A1111 allows S/R on several axes
            continue
        if axis.kind in seen:
            problems.add(f"{name}.axis", f"{axis.kind} is already the {seen[axis.kind]} axis; each axis kind once")
        seen[axis.kind] = name
    for axis_name in sampling.vary:
        if axes.get(axis_name) is None:
            problems.add("sampling.vary", f"cannot vary seeds along {axis_name}: the study has no [{axis_name}]")


def _check_prompts(prompt: str, negative: str, axes: dict, sampling: Sampling, problems: _Problems) -> None:
    """Prompt syntax errors A1111 would reject, found now instead of at the first cell.

    Each piece is checked on its own (the templates, every expression text, character text and Prompt
    S/R value): linear in the number of rows and columns, where checking every filled-in prompt would
    grow with the number of cells.
    """
    pieces = [("prompt.positive", _PLACEHOLDER_RE.sub("x", prompt), True),
              ("prompt.negative", _PLACEHOLDER_RE.sub("x", negative), False)]
    for name, axis in axes.items():
        if axis is None:
            continue
        for v in axis.values:
            if axis.kind == "expressions" and isinstance(v.value, str):
                pieces.append((f"{name}: expression {v.label!r}", v.value, True))
            elif axis.kind == "characters" and v.value is not None:
                pieces.append((f"{name}: character {v.label!r} text", getattr(v.value, "text", "") or "", True))
            elif axis.kind == "Prompt S/R":
                pieces.append((f"{name}: Prompt S/R value {str(v.value)[:40]!r}", str(v.value), True))
    for key, text, positive in pieces:
        for message in prompt_problems(text, sampling.steps, sampling.sampler, positive=positive):
            problems.add(key, message)


def prompt_problems(text: str, steps: int, sampler: str | None, *, positive: bool = True) -> list[str]:
    """Why A1111 would stop on ``text`` (or it is beyond our limits); empty when it can be used."""
    from expressiongrid.prompts import explain

    if len(text) > MAX_PROMPT_CHARS:
        return [f"{len(text):,} characters; a prompt may have at most {MAX_PROMPT_CHARS:,} (about "
                f"{MAX_PROMPT_CHARS // 300} chunks of 75 tokens): shorten it"]
    try:
        explanation = explain(text, steps, sampler) if positive else explain("", steps, sampler, negative_prompt=text)
    except ExpressionGridError as exc:
        return [str(exc)]
    return [str(w) for w in explanation.warnings if w.kind == "syntax-error"]


def _check_characters(axes: dict, model: ModelSpec, problems: _Problems,
                      column_problems: dict[str, list[str]]) -> list:
    """Check every character's files; file faults go to ``column_problems`` (per character id)."""
    values = [v for a in axes.values() if a is not None and a.kind == "characters" for v in a.values
              if v.value is not None]
    if not values:
        return []
    text_width = expected_text_width(model.source) if isinstance(model.source, str) else None
    for v in values:
        found = list(v.info.get("problems", [])) or list(
            check_characters([v.value], family="sd15", text_width=text_width))
        if found:
            v.info["problems"] = found
            column_problems[v.id] = found
    # Tokens are checked per character above; two characters' tokens can still collide (or be prefixes of one
    # another) in one run, which no single column can be blamed for: a study problem.
    already = {p for found in column_problems.values() for p in found}
    requests = [(str(e.path), e.token) for v in values for e in v.value.embeddings]
    for problem in token_problems(requests):
        if problem not in already:
            problems.add("columns", problem)
    return [v.value for v in values]
