"""Grid axes: the axis type table and A1111's X/Y/Z value syntax.

`parse_axis("Steps", "1-10 (+3)")` turns what a user typed into the values a study iterates over and
the legend labels the grid shows, the way AUTOMATIC1111's X/Y/Z plot reads them (v1.10.1):

* values are CSV (``a, "b, c", d``); newlines also separate values; every value is stripped;
* whole-number axes accept ``1-5`` (inclusive), ``1-10 (+3)`` (signed step), ``0-10 [4]`` (count,
  truncated towards zero); decimal axes the same with decimals;
* empty values are dropped on number axes and kept on text axes;
* Seed values of -1 become a random seed once, before anything is generated (A1111's default).

Besides A1111's axis types there are ``Expression`` (an expression set file, a built-in set name, or
inline text), ``Character`` (character files or ``reference``) and ``LoRA weight``.

Pure Python apart from a lazy numpy import for count ranges: the plan and ``--help`` stay torch-free.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from expressiongrid.errors import StudyError
from expressiongrid.limits import MAX_CELLS
from expressiongrid.text import csv_split as split_values

__all__ = [
    "AXIS_TYPES",
    "AxisError",
    "AxisType",
    "AxisValues",
    "axis_type",
    "console_line",
    "format_legend",
    "parse_axis",
    "parse_size",
    "prompt_order",
    "prompt_sr",
    "split_values",
]


class AxisError(StudyError, ValueError):
    """An axis name or value that cannot be used. The message names the axis and the bad value."""

    def __init__(self, message: str, axis: str | None = None, value: str | None = None):
        self.axis = axis
        self.value = value
        super().__init__(message)


# -- the axis type table --------------------------------------------------------------------------------

# Legend styles: "label" -> "Steps: 10"; "value" -> "10"; "basename" -> file name without folders;
# "join" -> "a, b, c" (Prompt order); "nothing" -> "".
@dataclass(frozen=True)
class AxisType:
    """One kind of axis: how its values are parsed, which cell parameter they set, how they are labelled.

    `kind` is the value type (``int``, ``float``, ``str``, ``permutations``, ``nothing``, ``expression``,
    ``character``); `field` the cell parameter it sets (``None`` where the runner cannot apply it: those
    axes parse, so A1111 values can be checked, but a study that uses them is refused by the planner);
    `cost` orders loops the way A1111 does (expensive axes outermost).
    """

    name: str
    kind: str
    field: str | None
    legend: str = "label"
    cost: float = 0.0
    aliases: tuple[str, ...] = ()
    confirm: Callable[[str, list[Any]], None] | None = None

    @property
    def supported(self) -> bool:
        """True when expressiongrid's runner can apply this axis (not only parse it)."""
        return self.field is not None


def _confirm_samplers(axis: str, values: list[Any]) -> None:
    """Every value must be a sampler the engine runs (A1111 names, aliases, combined legacy names such as
    ``DPM++ 2M Karras``): one table for study files, axes and ``xyz``."""
    from expressiongrid.samplers import get_sampler
    from expressiongrid.errors import SamplerError

    for value in values:
        try:
            get_sampler(str(value))
        except SamplerError as exc:
            raise AxisError(f"{axis} axis: {exc}", axis=axis, value=value) from None


def _confirm_schedule_types(axis: str, values: list[Any]) -> None:
    from expressiongrid.samplers import SCHEDULE_TYPES, _schedule_type
    from expressiongrid.errors import SamplerError

    for value in values:
        try:
            _schedule_type(str(value))
        except SamplerError:
            raise AxisError(f"{axis} axis: unknown schedule type {value!r}; A1111's are {', '.join(SCHEDULE_TYPES)}",
                            axis=axis, value=value) from None


def _a(name, kind, fld, legend="label", cost=0.0, aliases=(), confirm=None) -> AxisType:
    return AxisType(name, kind, fld, legend, cost, tuple(aliases), confirm)


_TABLE: list[AxisType] = [
    _a("Nothing", "nothing", "nothing", "nothing", aliases=("none",)),
    # expressiongrid's own axes: rows and columns of an expression study.
    _a("Expression", "expression", "expression", "value", aliases=("expressions",)),
    _a("Character", "character", "character", "value", cost=0.5, aliases=("characters",)),
    _a("LoRA weight", "float", "lora_weight", aliases=("lora weights", "lora_weight")),
    # A1111 txt2img axes, A1111 labels.
    _a("Seed", "int", "seed"),
    _a("Var. seed", "int", None),
    _a("Var. strength", "float", None),
    _a("Steps", "int", "steps"),
    _a("Hires steps", "int", None),
    _a("CFG Scale", "float", "cfg_scale", aliases=("cfg", "cfg_scale")),
    _a("Image CFG Scale", "float", None),
    _a("Prompt S/R", "str", "prompt_sr", "value", aliases=("prompt sr", "sr")),
    _a("Prompt order", "permutations", None, "join"),
    _a("Sampler", "str", "sampler", "value", confirm=_confirm_samplers),
    _a("Hires sampler", "str", None, confirm=_confirm_samplers),
    _a("Checkpoint name", "str", "checkpoint", "basename", cost=1.0, aliases=("checkpoint", "model")),
    _a("Negative Guidance minimum sigma", "float", None),
    _a("Sigma Churn", "float", None),
    _a("Sigma min", "float", None),
    _a("Sigma max", "float", None),
    _a("Sigma noise", "float", None),
    _a("Schedule type", "str", "schedule_type", confirm=_confirm_schedule_types),
    _a("Schedule min sigma", "float", None),
    _a("Schedule max sigma", "float", None),
    _a("Schedule rho", "float", None),
    _a("Beta schedule alpha", "float", None),
    _a("Beta schedule beta", "float", None),
    _a("Eta", "float", None),
    _a("Clip skip", "int", "clip_skip", aliases=("clip_skip",)),
    _a("Denoising", "float", None),
    _a("Initial noise multiplier", "float", None),
    _a("Extra noise", "float", None),
    _a("Hires upscaler", "str", None),
    _a("Cond. Image Mask Weight", "float", None),
    _a("VAE", "str", None, cost=0.7),
    _a("Styles", "str", None),
    _a("UniPC Order", "int", None, cost=0.5),
    _a("Face restore", "str", None, "value"),
    _a("Token merging ratio", "float", None),
    _a("Token merging ratio high-res", "float", None),
    _a("Always discard next-to-last sigma", "str", None),
    _a("SGM noise multiplier", "str", None),
    _a("Refiner checkpoint", "str", None, "basename", cost=1.0),
    _a("Refiner switch at", "float", None),
    _a("RNG source", "str", None),
    _a("FP8 mode", "str", None, cost=0.9),
    _a("Size", "str", "size"),
]

AXIS_TYPES: dict[str, AxisType] = {t.name: t for t in _TABLE}
_LOOKUP: dict[str, AxisType] = {}
for _t in _TABLE:
    for _key in (_t.name, *_t.aliases):
        _LOOKUP[_key.lower()] = _t


def axis_type(name: str) -> AxisType:
    """The axis type called `name` (A1111's label or an alias, any case); AxisError if unknown."""
    found = _LOOKUP.get(name.strip().lower())
    if found is None:
        ours = [t.name for t in _TABLE if t.supported]
        raise AxisError(
            f"unknown axis type {name!r}; use one of: {', '.join(ours)}", axis=name, value=None
        )
    return found


# -- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisValues:
    """The parsed values of one axis and their legend labels (same length, same order).

    Unpacks as ``values, labels = parse_axis(...)``. `text` is what the user typed (A1111 writes it into
    the grid's ``X Values``); `fixed_seeds` is True when -1 seeds were replaced by random ones, which
    A1111 records as ``Fixed X Values``, and `drawn` says at which positions; `warnings` are values A1111
    would ignore at run time.
    """

    axis: AxisType
    text: str
    values: list[Any]
    labels: list[str]
    fixed_seeds: bool = False
    warnings: list[str] = field(default_factory=list)
    drawn: tuple[int, ...] = ()

    def __iter__(self) -> Iterator[list]:
        return iter((self.values, self.labels))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def name(self) -> str:
        return self.axis.name

    @property
    def fixed_values_text(self) -> str:
        """A1111's ``Fixed X Values`` text: the values as written after seeds were fixed."""
        return ", ".join(str(v) for v in self.values)


_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:.\d*)?"  # A1111 leaves the dot unescaped; kept so odd inputs fail the same way
_INT_RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
_FLOAT_RANGE = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")

_INT_HELP = "write whole numbers (10,20,30) or ranges (1-5, 1-10 (+3), 0-10 [4])"
_FLOAT_HELP = "write numbers (5,7.5) or ranges (1-2 (+0.25), 0-1 [5])"


def _number(axis: str, item: str, text: str, convert, help_text: str):
    try:
        return convert(text)
    except ValueError:
        kind = "a whole number" if convert is int else "a number"
        part = "" if text == item else f" ({text!r} is not {kind})"
        raise AxisError(
            f"{axis} axis: {item!r} is not {kind} or range{part}; {help_text}", axis=axis, value=item
        ) from None


def _check_count(axis: str, item: str, count: float, so_far: int) -> None:
    """A range that would expand past the cell limit is refused before it is expanded."""
    if count + so_far > MAX_CELLS:
        raise AxisError(f"{axis} axis: {item[:40]!r} gives {count:,.0f} values; an axis may have at most "
                        f"{MAX_CELLS:,}", axis, item)


def _int_values(axis: str, items: list[str]) -> list[int]:
    out: list[int] = []
    for item in items:
        if item.strip() == "":
            continue
        m = _INT_RANGE.fullmatch(item)
        mc = _INT_COUNT.fullmatch(item)
        if m is not None:
            start = _number(axis, item, m.group(1), int, _INT_HELP)
            end = _number(axis, item, m.group(2), int, _INT_HELP)
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step == 0:
                raise AxisError(f"{axis} axis: {item!r} has a step of 0; use (+1) or (-1)", axis, item)
            # A1111 keeps the "+1" of an ascending range even when stepping down: 5-1 (-1) is 5,4,3.
            _check_count(axis, item, len(range(start, end + 1, step)), len(out))
            out.extend(range(start, end + 1, step))
        elif mc is not None:
            import numpy as np

            start = _number(axis, item, mc.group(1), int, _INT_HELP)
            end = _number(axis, item, mc.group(2), int, _INT_HELP)
            count = int(mc.group(3)) if mc.group(3) is not None else 1
            _check_count(axis, item, count, len(out))
            out.extend(int(x) for x in np.linspace(start, end, num=count).tolist())
        else:
            out.append(_number(axis, item, item, int, _INT_HELP))
    return out


def _float_values(axis: str, items: list[str]) -> list[float]:
    out: list[float] = []
    for item in items:
        if item.strip() == "":
            continue
        m = _FLOAT_RANGE.fullmatch(item)
        mc = _FLOAT_COUNT.fullmatch(item)
        if m is not None:
            import numpy as np

            start = _number(axis, item, m.group(1), float, _FLOAT_HELP)
            end = _number(axis, item, m.group(2), float, _FLOAT_HELP)
            step = _number(axis, item, m.group(3), float, _FLOAT_HELP) if m.group(3) is not None else 1.0
            if step == 0:
                raise AxisError(f"{axis} axis: {item!r} has a step of 0; use e.g. (+0.5)", axis, item)
            if not all(math.isfinite(x) for x in (start, end, step)):
                raise AxisError(f"{axis} axis: {item[:40]!r} is not a range of finite numbers", axis, item)
            _check_count(axis, item, max(0.0, (end + step - start) / step), len(out))
            # numpy.arange like A1111: steps accumulate float error and can overshoot the end.
            out.extend(float(x) for x in np.arange(start, end + step, step).tolist())
        elif mc is not None:
            import numpy as np

            start = _number(axis, item, mc.group(1), float, _FLOAT_HELP)
            end = _number(axis, item, mc.group(2), float, _FLOAT_HELP)
            count = _number(axis, item, mc.group(3), int, _FLOAT_HELP) if mc.group(3) is not None else 1
            _check_count(axis, item, count, len(out))
            out.extend(float(x) for x in np.linspace(start, end, num=count).tolist())
        else:
            out.append(_number(axis, item, item, float, _FLOAT_HELP))
    return out


def format_legend(axis: AxisType, value: Any) -> str:
    """The grid legend for one value, A1111-style (`Steps: 10`, `CFG Scale: 7.0`, raw S/R text)."""
    if axis.legend == "nothing":
        return ""
    if axis.legend == "join":
        return ", ".join(value)
    if axis.legend == "basename":
        return os.path.basename(value)
    if axis.kind == "expression":
        return value.label
    if axis.kind == "character":
        return _character_label(value)
    if axis.legend == "value":
        return str(value)
    if isinstance(value, float):
        value = round(value, 8)
    return f"{axis.name}: {value}"


def _character_label(value: str) -> str:
    if value.lower() == "reference":
        return "reference"
    stem = os.path.basename(value.replace("\\", "/"))
    return os.path.splitext(stem)[0] if os.path.splitext(stem)[1] else stem


def parse_size(value: str, axis: str = "Size") -> tuple[int, int]:
    """`"512x768"` -> (512, 768). AxisError unless both sides are positive multiples of 8."""
    width, sep, height = str(value).partition("x")
    try:
        w, h = int(width.strip()), int(height.strip())
    except ValueError:
        raise AxisError(f"{axis} axis: {value!r} is not a size; write WIDTHxHEIGHT, e.g. 512x768", axis, value) from None
    if not sep or w <= 0 or h <= 0 or w % 8 or h % 8:
        raise AxisError(
            f"{axis} axis: {value!r} is not a usable size; both sides must be positive multiples of 8",
            axis,
            value,
        )
    return w, h


def parse_axis(
    axis_name: str,
    text: str,
    *,
    fix_seeds: bool = True,
    rng: random.Random | None = None,
    base_dir: str | os.PathLike | None = None,
) -> AxisValues:
    """Parse one axis the way A1111's X/Y/Z plot does; returns values and legend labels.

    `axis_name` is an A1111 label (``Steps``, ``CFG Scale``, ``Prompt S/R``, ``Sampler``,
    ``Checkpoint name``, ``Clip skip``, ``Size``, ``Seed``, ...) or one of ``Expression``, ``Character``,
    ``LoRA weight``. With `fix_seeds` (A1111's default, "Keep -1 for seeds" off) Seed values of -1 become
    random seeds drawn from `rng`. `base_dir` resolves relative expression-set paths.
    Raises AxisError (a UsageError) naming the axis and the bad value.

    Example: ``parse_axis("Steps", "1-10 (+3)")`` -> values ``[1, 4, 7, 10]``, labels ``["Steps: 1", ...]``.
    """
    axis = axis_type(axis_name)
    text = "" if text is None else str(text)
    warnings: list[str] = []
    drawn: tuple[int, ...] = ()

    if axis.kind == "nothing":
        values: list[Any] = [0]
    elif axis.kind == "expression":
        values = _expression_values(axis.name, text, base_dir)
    else:
        items = split_values(text)
        if axis.kind == "int":
            values = _int_values(axis.name, items)
        elif axis.kind == "float":
            values = _float_values(axis.name, items)
        elif axis.kind == "permutations":
            _check_count(axis.name, text, math.factorial(len(items)), 0)
            values = [list(p) for p in itertools.permutations(items)]
        else:
            values = items
        if axis.kind == "character":
            values = [v for v in values if v != ""]
    if axis.confirm is not None:
        axis.confirm(axis.name, values)
    if axis.name in ("Seed", "Var. seed") and fix_seeds:
        draw = rng or random.Random()
        drawn = tuple(i for i, v in enumerate(values) if v == -1)
        values = [draw.randrange(4294967294) if v == -1 else v for v in values]
    if axis.name == "Size":
        for v in values:
            try:
                parse_size(v)
            except AxisError as exc:
                warnings.append(str(exc))
    labels = [format_legend(axis, v) for v in values]
    return AxisValues(axis, text, values, labels, bool(drawn), warnings, drawn)


def _expression_values(axis: str, text: str, base_dir) -> list[Any]:
    """An expression set (file path or built-in set name) or inline comma-separated expressions."""
    from expressiongrid.study import expressions as ex

    stripped = text.strip()
    source = ex.find_expression_set(stripped, base_dir=base_dir) if stripped else None
    if source is not None:
        return list(ex.load_expression_set(source).expressions)
    items = [item for item in split_values(text) if item]
    if not items:
        raise AxisError(f"{axis} axis: no expressions given; name a set (e.g. seed-study) or list prompts", axis, text)
    return list(ex.inline_expressions(items, source=f"{axis} axis").expressions)


# -- applying values (shared with the runner) ---------------------------------------------------------


def prompt_sr(prompt: str, negative_prompt: str, search: str, replacement: str) -> tuple[str, str]:
    """A1111's Prompt S/R: replace every `search` in prompt and negative prompt (case-sensitive).

    The first value of a Prompt S/R axis is the search text, so its own cell is the unchanged prompt.
    Raises AxisError if `search` occurs in neither, as A1111 aborts the run.
    """
    if search not in prompt and search not in negative_prompt:
        raise AxisError(
            f"Prompt S/R axis: {search!r} (the first value, the text to replace) is not in the prompt "
            "or the negative prompt; make the first value a piece of the prompt",
            axis="Prompt S/R",
            value=search,
        )
    return prompt.replace(search, replacement), negative_prompt.replace(search, replacement)


def prompt_order(prompt: str, order: Sequence[str]) -> str:
    """A1111's Prompt order: put the tokens of `order` into the slots where they first appear."""
    slots = sorted((prompt.find(token), token) for token in order if token in prompt)
    if len(slots) != len(order):
        missing = [t for t in order if t not in prompt]
        raise AxisError(f"Prompt order axis: {missing[0]!r} is not in the prompt", "Prompt order", missing[0])
    out, pos = [], 0
    for (start, token), new in zip(slots, order):
        out.append(prompt[pos:start])
        out.append(new)
        pos = start + len(token)
    out.append(prompt[pos:])
    return "".join(out)


def console_line(
    x: AxisValues | None,
    y: AxisValues | None = None,
    z: AxisValues | None = None,
    *,
    steps: int = 20,
    images_per_cell: int = 1,
) -> str:
    """A1111's announcement, e.g. ``X/Y/Z plot will create 6 images on 1 2x3 grid. (Total steps to process: 90)``.

    Missing axes count as Nothing (one value). Total steps sum a Steps axis' values, else `steps` per cell.
    """
    counts = [len(a) if a is not None else 1 for a in (x, y, z)]
    nx, ny, nz = counts
    total = steps * nx * ny * nz
    for axis, others in ((x, ny * nz), (y, nx * nz), (z, nx * ny)):
        if axis is not None and axis.axis.name == "Steps":
            total = sum(axis.values) * others
            break
    per_cell = f"; {images_per_cell} images per cell" if images_per_cell > 1 else ""
    plural = "s" if nz > 1 else ""
    return (
        f"X/Y/Z plot will create {nx * ny * nz * images_per_cell} images on {nz} {nx}x{ny} grid{plural}"
        f"{per_cell}. (Total steps to process: {total})"
    )
