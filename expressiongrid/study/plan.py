"""The plan: every cell of a study, fully resolved (prompt texts, seed, sampler, steps, CFG, size, character).

Axis semantics follow A1111's X/Y/Z plot with columns = X, rows = Y and pages = Z:

* placeholders ``{expression}`` and ``{character}`` are filled first (the reference column's character
  text is ``prompt.reference``), then the A1111 axes are applied in X, Y, Z order on a copy of the base
  settings, so a Prompt S/R on Y searches the prompt that X already changed;
* Prompt S/R: the axis' first value is the search text, replaced (all occurrences, case-sensitive) in the
  prompt *and* the negative prompt; a search text found in neither is an error before anything runs;
* cells are listed in A1111's loop order: the axis with the strictly highest cost outermost (checkpoints,
  then characters), so the runner activates each character once per column.

Each cell's key is a content hash of everything that determines its pixels (``cell_key``), so a rerun
finds finished cells and an extended study only adds new ones. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expressiongrid.characters import hashes
from expressiongrid.errors import StudyError
from expressiongrid.study.seeds import resolve_base_seed, sample_seeds, vary_offset
from expressiongrid.engine.loading import ModelSpec
from expressiongrid.study.study import PLACEHOLDERS, Axis, AxisValue, Study

KEY_VERSION = 1  # bump when the meaning of a key's inputs changes, so old cells are not reused wrongly
TINY_IDENTITY = "tiny-sd15:v1"


@dataclass
class CellSpec:
    """Everything needed to make one image, in A1111's terms."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg_scale: float
    sampler: str
    width: int
    height: int
    model: ModelSpec
    character: Any = None  # characters.Character, or None for the reference column / no character axis
    lora_weight: float = 1.0
    # What the cell switches on (study.networks): the character's files and the prompt's tags and embedding
    # words, weights as used; None when nothing is.
    networks: Any = None
    schedule_type: str | None = None
    noise_source: str = "cpu"


@dataclass
class PlannedCell:
    """One image of the plan and its place in the grid (``sample`` > 0 only with several seeds per cell)."""

    key: str
    page: int
    row_index: int
    col_index: int
    sample: int
    row: AxisValue
    col: AxisValue
    page_value: AxisValue | None
    spec: CellSpec
    key_inputs: dict = field(default_factory=dict)

    @property
    def character_id(self) -> str | None:
        ch = self.spec.character
        return getattr(ch, "id", None) if ch is not None else ("reference" if self.col.info.get("reference") else None)

    def activation_group(self) -> tuple:
        """Cells with equal groups share one model load and one activation (same column, same LoRA set)."""
        return (_model_identity_key(self.spec.model), self.character_id, _networks_key(self.spec.networks))


@dataclass
class PromptNotes:
    """The warnings about one distinct prompt of a plan (``prompts.PromptWarning`` objects)."""

    prompt: str
    negative_prompt: str
    warnings: list
    cells: int = 1  # how many images use this prompt

    def lines(self) -> list[str]:
        """One line per warning, naming the prompt (shortened) it is about."""
        shown = self.prompt if len(self.prompt) <= 80 else self.prompt[:77] + "..."
        uses = f" ({self.cells} images)" if self.cells > 1 else ""
        return [f"prompt {shown!r}{uses}: {w}" for w in self.warnings]


@dataclass
class Plan:
    """The cells of a study in generation order, plus what the grid will look like."""

    study: Study
    cells: list[PlannedCell]
    base_seed: int
    loop_order: tuple[str, str, str]  # e.g. ("x", "y", "z") = columns outermost, pages innermost
    # grid_plans' layouts, made once: the summary, the warnings and the upload plan all read them, and each
    # page's layout measures every label in the fonts
    _grid_plans: list | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_rows(self) -> int:
        return len(self.study.rows)

    @property
    def n_cols(self) -> int:
        return len(self.study.columns)

    @property
    def n_pages(self) -> int:
        return len(self.study.pages) if self.study.pages is not None else 1

    def unique_keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for cell in self.cells:
            seen.setdefault(cell.key, None)
        return list(seen)

    def total_steps(self) -> int:
        return sum(c.spec.steps for c in self.cells)

    def describe(self) -> dict:
        """What will be made: counts, pages and each page's grid size (split into parts where too large)."""
        s = self.study.sampling
        plans = self.grid_plans()
        grid = plans[_largest(plans)]
        w, h = grid.unsplit_size
        return {
            "cells": self.n_rows * self.n_cols * self.n_pages,
            "images": len(self.cells),
            "unique_images": len(self.unique_keys()),
            "rows": self.n_rows,
            "columns": self.n_cols,
            "pages": self.n_pages,
            "seeds_per_cell": s.seeds_per_cell,
            "cell_size": [s.width, s.height],
            "grid_size": [w, h],
            "page_grid_sizes": [list(g.unsplit_size) for g in plans],
            "grid_megapixels": round(w * h / 1e6, 2),
            "grid_parts_per_page": grid.page_count,
            "grid": grid.describe(),
            "grid_plan": grid.to_dict(),
            "upload_copy": self.upload_plan(),
            "total_steps": self.total_steps(),
        }

    def grid_options(self):
        """The study's ``[output]`` grid settings (``output.grid.GridOptions``)."""
        from expressiongrid.output.grid import GridOptions

        study = self.study
        return GridOptions.from_output(vars(study.output), study.rows.kind, study.columns.kind,
                                       study.pages.kind if study.pages else None)

    def prompt_warnings(self) -> list[PromptNotes]:
        """A1111's silent fallbacks in the cells' prompts (unclosed brackets, ``|`` turning prompt editing off,
        ``[a:b:1.0]``, unknown network kinds, ...), once per distinct prompt and negative prompt, in plan order."""
        from expressiongrid.prompts import explain

        notes: dict[tuple[str, str], PromptNotes] = {}
        for cell in self.cells:
            s = cell.spec
            key = (s.prompt, s.negative_prompt)
            if key in notes:
                notes[key].cells += 1
                continue
            found = explain(s.prompt, s.steps, s.sampler, negative_prompt=s.negative_prompt).warnings
            notes[key] = PromptNotes(s.prompt, s.negative_prompt, list(found))
        return [n for n in notes.values() if n.warnings]

    def warnings(self) -> list[str]:
        """Every warning the plan has for the user, one line each: columns that will fail, what a character's
        files ask for that is not done, overridden schedule types, grid labels, prompts. `run` prints them and
        run.log records them, from this one list."""
        study = self.study
        labels = {v.id: v.label for v in study.columns.values}
        out = [f"column {labels.get(column, column)!r} will fail: {problem}"
               for column, problems in (getattr(study, "column_problems", None) or {}).items() for problem in problems]
        out += [f"character {v.label!r}: {note}" for axis in (study.columns, study.rows, study.pages)
                if axis is not None and axis.kind == "characters" for v in axis.values
                for note in getattr(v.value, "notes", ())]
        characters = [a for a in (study.columns, study.rows, study.pages) if a is not None and a.kind == "characters"]
        if study.reference_text and not any(v.value is None for a in characters for v in a.values):
            out.append(f"the reference text {study.reference_text!r} (prompt.reference, xyz --reference) is not used: "
                       "it is what {character} becomes in a characters axis' reference column, and there is none")
        out += self.sampler_warnings() + list(self.grid_plan().warnings)
        return out + [line for notes in self.prompt_warnings() for line in notes.lines()]

    def sampler_warnings(self) -> list[str]:
        """A schedule type the study or an axis gives that a combined sampler name overrides: "DPM++ 2M Karras"
        with schedule type Exponential runs Karras, as in A1111, so the Exponential the user wrote is said."""
        from expressiongrid.samplers import split_sampler_name

        study = self.study
        axes = [a for a in (study.columns, study.rows, study.pages) if a is not None]
        samplers = [v.value for a in axes if a.kind == "Sampler" for v in a.values] or [study.sampling.sampler]
        schedules = [v.value for a in axes if a.kind == "Schedule type" for v in a.values] or \
            [study.sampling.schedule_type]
        out = []
        for sampler in dict.fromkeys(map(str, samplers)):
            own = split_sampler_name(sampler)[1]
            for schedule in dict.fromkeys(schedules):
                if own and schedule and str(schedule).strip().lower() not in ("automatic", own.lower()):
                    out.append(f"sampler {sampler!r} names its own schedule type ({own}), which wins over schedule "
                               f"type {schedule!r}, as in A1111; write the sampler without it ({split_sampler_name(sampler)[0]!r}) "
                               "to use the other")
        return out

    def page_titles(self) -> list[str | None]:
        """The title drawn on each page of the grid (``output.grid.page_title``: the study's title and the page's
        label), one entry when there is no page axis."""
        from expressiongrid.output.grid import page_title

        study = self.study
        if study.pages is None:
            return [study.output.title]
        return [page_title(study.output.title, v.label) for v in study.pages.values]

    def grid_plans(self) -> list:
        """The compositor's layout (``output.grid.plan_grid``) of each page of this plan with the title drawn on
        it, before drawing; pages whose titles wrap onto more lines are taller."""
        from expressiongrid.output.grid import plan_grid

        if self._grid_plans is None:
            study, s = self.study, self.study.sampling
            titles = self.page_titles()
            planned: dict[str | None, object] = {}
            for title in dict.fromkeys(titles):
                planned[title] = plan_grid(
                    self.n_rows, self.n_cols, (s.width * s.seeds_per_cell, s.height),
                    [v.label for v in study.rows.values], [v.label for v in study.columns.values], title,
                    fmt=study.output.grid_formats[0], **self.grid_options().plan_kwargs(),
                    also_drawn=[t or "" for t in titles])
            self._grid_plans = [planned[t] for t in titles]
        return list(self._grid_plans)

    def grid_plan(self):
        """The layout of the largest page (``grid_plans``): what the summary, the warnings and the limits go by."""
        plans = self.grid_plans()
        return plans[_largest(plans)]

    def upload_plan(self) -> dict | None:
        """The upload copy each page gets: one image of the whole grid, or one per grid part."""
        from expressiongrid.output.grid import plan_grid, upload_cell_size, UPLOAD_LIMITS

        study, s = self.study, self.study.sampling
        if not study.output.upload_copy:
            return None
        plans = self.grid_plans()
        title = self.page_titles()[_largest(plans)]
        args = (self.n_rows, self.n_cols, (s.width * s.seeds_per_cell, s.height),
                [v.label for v in study.rows.values], [v.label for v in study.columns.values], title)
        kwargs = self.grid_options().plan_kwargs()
        kwargs.pop("max_cells_per_page")
        size = upload_cell_size(*args, upload_fmt=study.output.upload_copy, **kwargs)
        if size is None:
            return {"format": study.output.upload_copy, "single_image": False}
        whole = plan_grid(*args[:2], size, *args[3:], limits=UPLOAD_LIMITS[study.output.upload_copy], **kwargs)
        return {"format": study.output.upload_copy, "single_image": True, "cell_size": list(size),
                "size": list(whole.unsplit_size)}


def _largest(grid_plans: list) -> int:
    """The index of the page with the most pixels among ``Plan.grid_plans`` (the first of equal ones)."""
    return max(range(len(grid_plans)), key=lambda i: (grid_plans[i].unsplit_size[0] * grid_plans[i].unsplit_size[1], -i))


# ----------------------------------------------------------------------------------------------------
# Loop order (A1111 xyz_grid: strictly most expensive axis outermost)


def loop_order(cost_x: float, cost_y: float, cost_z: float) -> tuple[str, str, str]:
    """A1111's loop nesting, outermost first, from the three axes' costs (ties keep z → y → x)."""
    if cost_x > cost_y and cost_x > cost_z:
        first, second = "x", ("y" if cost_y > cost_z else "z")
    elif cost_y > cost_x and cost_y > cost_z:
        first, second = "y", ("x" if cost_x > cost_z else "z")
    elif cost_z > cost_x and cost_z > cost_y:
        first, second = "z", ("x" if cost_x > cost_y else "y")
    else:
        first, second = "z", "y"
    third = ({"x", "y", "z"} - {first, second}).pop()
    return first, second, third


def cell_order(nx: int, ny: int, nz: int, order: tuple[str, str, str]) -> list[tuple[int, int, int]]:
    """All (ix, iy, iz) in the order A1111 processes them for a given loop nesting."""
    dims = {"x": nx, "y": ny, "z": nz}
    out = []
    for a in range(dims[order[0]]):
        for b in range(dims[order[1]]):
            for c in range(dims[order[2]]):
                idx = {order[0]: a, order[1]: b, order[2]: c}
                out.append((idx["x"], idx["y"], idx["z"]))
    return out


# ----------------------------------------------------------------------------------------------------


def plan(study: Study, *, rng: random.Random | None = None, random_seed: int | None = None) -> Plan:
    """Resolve every cell of ``study``; ``StudyError`` lists every cell that cannot be made.

    With ``seed = -1`` a random seed is drawn, unless ``random_seed`` gives the one an earlier run of this
    study drew (``run.resume.read_resume_state``), so a resumed run continues the same grid.
    """
    s = study.sampling
    base_seed = random_seed if (s.seed == -1 and random_seed is not None) else resolve_base_seed(s.seed, rng)
    x, y = study.columns, study.rows
    z = study.pages or Axis("Nothing", [AxisValue("0", "", None)])
    order = loop_order(x.cost, y.cost, z.cost)
    dims = (len(x), len(y), len(z))
    vary = ("columns" in s.vary, "rows" in s.vary, "pages" in s.vary)

    cells: list[PlannedCell] = []
    problems: list[str] = []
    identities: dict = {}
    for ix, iy, iz in cell_order(*dims, order):
        col, row, page = x.values[ix], y.values[iy], z.values[iz]
        try:
            spec = _resolve_cell(study, base_seed, (x, col), (y, row), (z, page))
        except StudyError as exc:
            for message in exc.problems or [str(exc)]:
                if message not in problems:
                    problems.append(message)
            continue
        cell_seed = spec.seed + vary_offset(ix, iy, iz, dims, vary)
        for sample, seed in enumerate(sample_seeds(cell_seed, s.seeds_per_cell, dims, vary)):
            sample_spec = dataclasses.replace(spec, seed=seed)
            inputs = key_inputs(sample_spec, identities)
            cells.append(PlannedCell(cell_key(inputs), iz, iy, ix, sample, row, col,
                                     page if study.pages is not None else None, sample_spec, inputs))
    if not problems:
        problems = _check_prompt_files(study, cells)
    if len(problems) == 1:
        raise StudyError(problems[0])
    if problems:
        raise StudyError(f"{len(problems)} problems in the plan", problems)
    return Plan(study, cells, base_seed, order)


def _check_prompt_files(study: Study, cells: list[PlannedCell]) -> list[str]:
    """The files that prompts' tags and embedding words switch on (beyond the columns' own files) checked like
    character files (readable, a LoRA / an embedding, made for SD 1.5) before any model loads."""
    from expressiongrid.characters import check_characters
    from expressiongrid.characters.model import Character

    known = {Path(p) for ch in study.characters for p in ch.files()}
    loras: dict = {}
    embeddings: dict = {}
    for cell in cells:
        ch = cell.spec.networks
        if ch is None:
            continue
        loras.update((r.path, r) for r in ch.loras if r.path not in known and r.path not in loras)
        embeddings.update((e.path, e) for e in ch.embeddings if e.path not in known and e.path not in embeddings)
    if not loras and not embeddings:
        return []
    named = Character("prompt", "prompt", loras=list(loras.values()), embeddings=list(embeddings.values()))
    return [p.replace("character 'prompt': ", "named in a prompt: ", 1) for p in check_characters([named])]


def _fill_placeholders(template: str, values: dict[str, str]) -> str:
    out = template
    for name in PLACEHOLDERS:
        if name in values:
            out = out.replace("{" + name + "}", values[name])
    return out


def _resolve_cell(study: Study, base_seed: int, *axes: tuple[Axis, AxisValue]) -> CellSpec:
    s = study.sampling
    spec = CellSpec(prompt=study.prompt, negative_prompt=study.negative_prompt, seed=base_seed, steps=s.steps,
                    cfg_scale=s.cfg_scale, sampler=s.sampler, schedule_type=s.schedule_type, width=s.width,
                    height=s.height, model=study.model, noise_source=s.noise_source)
    fills: dict[str, str] = {}
    for axis, value in axes:
        if axis.kind == "expressions":
            fills["expression"] = value.value
        elif axis.kind == "characters":
            if value.value is None:
                fills["character"] = study.reference_text
            else:
                spec.character = value.value
                fills["character"] = getattr(value.value, "text", "") or ""
    spec.prompt = _fill_placeholders(spec.prompt, fills)
    spec.negative_prompt = _fill_placeholders(spec.negative_prompt, fills)
    for axis, value in axes:  # X, then Y, then Z, as A1111 applies them
        apply_axis_value(spec, axis, value)
    _check_sampler(spec)
    _resolve_networks(spec, study)
    return spec


def _resolve_networks(spec: CellSpec, study: Study) -> None:
    """Find the files the cell's tags and embedding words name; the written prompt carries the weights used."""
    from expressiongrid.config import load as load_config
    from expressiongrid.errors import PromptSyntaxError
    from expressiongrid.study.networks import resolve_networks

    try:
        found = resolve_networks(spec.prompt, spec.negative_prompt, spec.character, spec.lora_weight,
                                 study.user_config or load_config())
    except PromptSyntaxError as exc:
        raise StudyError(f"prompt {spec.prompt!r}: {exc}") from None
    if found.problems:
        raise StudyError(found.problems[0], found.problems)
    spec.prompt = found.prompt
    spec.networks = found.activation(spec.character)


def _check_sampler(spec: CellSpec) -> None:
    """A sampler A1111 knows but the engine does not implement is an error now, not a failed cell later.

    The cell then names its sampler by the table's canonical name, schedule type included ("DPM++ 2M" +
    "Automatic" is "DPM++ 2M Karras", as in A1111), so equal images have equal keys."""
    from expressiongrid.samplers import get_sampler
    from expressiongrid.errors import ExpressionGridError

    try:
        info = get_sampler(spec.sampler, spec.schedule_type)
    except ExpressionGridError as exc:
        raise StudyError(str(exc)) from None
    spec.sampler, spec.schedule_type = info.name, None


def apply_axis_value(spec: CellSpec, axis: Axis, value: AxisValue) -> None:
    """Set what one A1111 axis value changes on ``spec`` (in place)."""
    kind, v = axis.kind, value.value
    if kind in ("expressions", "characters", "Nothing"):
        return
    if kind == "Prompt S/R":
        from expressiongrid.study.axes import AxisError, prompt_sr

        search = axis.values[0].value
        try:
            spec.prompt, spec.negative_prompt = prompt_sr(spec.prompt, spec.negative_prompt, search, v)
        except AxisError as exc:
            raise StudyError(str(exc)) from None
    elif kind == "Seed":
        spec.seed = int(v)
    elif kind == "Steps":
        spec.steps = int(v)
    elif kind == "CFG Scale":
        spec.cfg_scale = float(v)
    elif kind == "Sampler":
        spec.sampler = str(v)
    elif kind == "Schedule type":
        spec.schedule_type = str(v)
    elif kind == "Checkpoint name":
        spec.model = dataclasses.replace(spec.model, source=str(v))
    elif kind == "Clip skip":
        spec.model = dataclasses.replace(spec.model, clip_skip=int(v))
    elif kind == "Size":
        from expressiongrid.study.axes import AxisError, parse_size

        try:
            spec.width, spec.height = parse_size(v)
        except AxisError as exc:
            raise StudyError(str(exc)) from None
    elif kind == "LoRA weight":
        spec.lora_weight = float(v)
    else:
        raise StudyError(f"axis {kind!r} cannot be applied by the runner")


# ----------------------------------------------------------------------------------------------------
# Keys


def _file_identity(path: str) -> str:
    """sha256 of a local file (cached by the characters area), or the source text for hub ids / tiny."""
    if path == "tiny":
        # The tiny model is built from code: its identity is that code, so a changed builder means new cells.
        from expressiongrid import tiny

        return f"{TINY_IDENTITY}:{hashes.file_sha256(tiny.__file__)[:16]}"
    p = Path(path)
    if p.is_file():
        return hashes.sha256(p)
    if p.is_dir():
        # A diffusers folder: hash the weight files' hashes, so a retrained folder gets new keys.
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in (".safetensors", ".bin", ".json"))
        return hashlib.sha256("".join(f"{q.relative_to(p)}={_file_identity(str(q))}" for q in files).encode()).hexdigest()
    return f"hub:{path}"


def _model_identity_key(m: ModelSpec) -> tuple:
    return (m.source, m.vae, m.clip_skip, m.dtype, m.device)


def _networks_key(ch: Any) -> tuple:
    if ch is None:
        return ()
    return (tuple((str(l.path), l.unet_weight, l.te_weight) for l in ch.loras),
            tuple((str(e.path), e.token) for e in ch.embeddings))


def _character_inputs(character: Any, ch: Any, identities: dict) -> dict | None:
    """The activated files and weights (``ch``: ``CellSpec.networks``) under the column character's id."""
    if ch is None:
        return None if character is None else {"id": character.id, "loras": [], "embeddings": []}

    def ident(path) -> str:
        key = str(path)
        if key not in identities:
            identities[key] = _file_identity(key)
        return identities[key]

    return {
        "id": character.id if character is not None else None,
        "loras": [[ident(l.path), float(l.unet_weight), float(l.te_weight)] for l in getattr(ch, "loras", [])],
        "embeddings": [[ident(e.path), e.token] for e in getattr(ch, "embeddings", [])],
    }


def key_inputs(spec: CellSpec, identities: dict | None = None) -> dict:
    """The JSON-ready inputs that determine a cell's pixels (hashed into its key)."""
    identities = {} if identities is None else identities

    def ident(path: str | None) -> str | None:
        if path is None:
            return None
        if path not in identities:
            identities[path] = _file_identity(path)
        return identities[path]

    m = spec.model
    return {
        "v": KEY_VERSION,
        "model": {"weights": ident(m.source), "vae": ident(m.vae), "clip_skip": m.clip_skip, "dtype": m.dtype},
        "character": _character_inputs(spec.character, spec.networks, identities),
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "seed": spec.seed,
        "sampler": spec.sampler,
        "schedule_type": spec.schedule_type,
        "steps": spec.steps,
        "cfg_scale": float(spec.cfg_scale),
        "width": spec.width,
        "height": spec.height,
        "noise_source": spec.noise_source,
    }


def cell_key(inputs: dict) -> str:
    """Content hash (sha256 hex, first 32 chars) of a cell's key inputs, stable across runs and machines."""
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
