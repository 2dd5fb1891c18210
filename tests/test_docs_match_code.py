"""The docs' tables say what the code does: each is read from the docs and compared with the code's own table."""

from __future__ import annotations

import re
from pathlib import Path

from expressiongrid import samplers

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table(doc: str, header_start: str) -> list[list[str]]:
    """The rows of the markdown table in docs/`doc` whose header row starts with `header_start`."""
    lines = (DOCS / doc).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _names(cell: str) -> list[str]:
    return [n.strip() for n in cell.split(",") if n.strip()]


def test_engine_md_sampler_table_is_the_sampler_table():
    by_name = {s.name: s for s in samplers._A1111}
    documented = {}
    for names, automatic, schedules, diffusers in _table("engine.md", "A1111 sampler"):
        for name in _names(names):
            documented[name] = (automatic, schedules, diffusers)
    assert sorted(documented) == sorted(samplers.RUNNABLE)
    for name, (automatic, schedules, diffusers) in documented.items():
        s = by_name[name]
        want_auto = {"Uniform": "model's schedule", "Automatic": "(timestep sampler)"}.get(s.automatic, s.automatic)
        assert automatic == want_auto, name
        assert _names(schedules) == list(dict.fromkeys(("Automatic", *s.schedules))), name
        # "Euler/LMS/HeunDiscreteScheduler" and "KDPM2(Ancestral)DiscreteScheduler" name several classes
        stem = re.sub(r"(Discrete|Multistep)?Scheduler$", "", s.scheduler_class)
        assert stem.replace("Ancestral", "")[:4] in diffusers, name


def test_engine_md_names_the_samplers_and_schedules_it_refuses():
    text = " ".join((DOCS / "engine.md").read_text(encoding="utf-8").split())
    refused = re.search(r"A name A1111 has but this engine cannot run \(([^)]*)\)", text).group(1)
    assert _names(refused) == [s for s in samplers.A1111_SAMPLERS if s not in samplers.RUNNABLE]
    schedules = re.search(r"A1111's ([A-Z][^.]*?) schedules are refused by name", text).group(1)
    runnable = {"Automatic", *(t for s in samplers._A1111 if s.scheduler_class for t in s.schedules)}
    assert sorted(_names(schedules.replace(" and ", ", "))) == sorted(
        t for t in samplers.SCHEDULE_TYPES if t not in runnable)


def test_study_file_axis_table_is_the_axes_that_run():
    from expressiongrid.study.axes import AXIS_TYPES
    from expressiongrid.study.study import canonical_axis_kind

    documented = [row[0].strip("`") for row in _table("study-file.md", "axis")]
    assert sorted(canonical_axis_kind(name) for name in documented) == sorted(
        canonical_axis_kind(t.name) for t in AXIS_TYPES.values() if t.field is not None)


# xyz flag -> (study table, key, attribute path on the Study)
_XYZ_FLAGS = {"steps": ("sampling", "steps"), "cfg_scale": ("sampling", "cfg_scale"), "width": ("sampling", "width"),
              "height": ("sampling", "height"), "seed": ("sampling", "seed"),
              "seeds_per_cell": ("sampling", "seeds_per_cell"), "clip_skip": ("model", "clip_skip"),
              "margin": ("output", "margin")}


def _study_value(table: str, key: str, value=None):
    """The study's setting `table.key` when a study file gives `value` (None: leaves it out)."""
    from expressiongrid.study.study import study_from_dict

    data = {"name": "t", "model": {"source": "tiny"}, "prompt": {"positive": "a cat"}, "rows": {"axis": "Nothing"},
            "columns": {"axis": "Nothing"}}
    if value is not None:
        data.setdefault(table, {})[key] = value
        if key == "seeds_per_cell" and value > 1:  # xyz --seeds-per-cell sets the policy itself
            data["sampling"]["seed_policy"] = "per-cell"
    study = study_from_dict(data, check_files=False)
    return getattr({"sampling": study.sampling, "model": study.model, "output": study.output}[table], key)


def test_xyz_flags_take_a_study_files_defaults_and_limits():
    import click

    from expressiongrid.cli import main
    from expressiongrid.errors import StudyError

    params = {p.name: p for p in main.get_command(click.Context(main), "xyz").params}
    for flag, (table, key) in _XYZ_FLAGS.items():
        param = params[flag]
        assert param.default == _study_value(table, key), flag
        if isinstance(param.type, click.IntRange):
            for edge, outside in ((param.type.min, -1), (param.type.max, 1)):
                if edge is None:
                    continue
                edge = edge - edge % 8 if key in ("width", "height") else edge
                assert _study_value(table, key, edge) == edge, flag
                try:
                    _study_value(table, key, edge + outside * (8 if key in ("width", "height") else 1))
                except StudyError:
                    continue
                raise AssertionError(f"--{flag}: a study file takes a value beyond the flag's {edge}")


def test_study_file_limits_table_is_limits_py():
    from expressiongrid import limits

    by_row = {"characters per prompt": limits.MAX_PROMPT_CHARS, "brackets open at once": limits.MAX_NESTING,
              "cells per study": limits.MAX_CELLS, "values of one axis": limits.MAX_CELLS,
              "pixels of one grid image": limits.MAX_GRID_PIXELS,
              "study, character, expression-set files": limits.MAX_TEXT_FILE_BYTES,
              "safetensors header": limits.MAX_SAFETENSORS_HEADER, "LoRA weight": limits.MAX_NETWORK_WEIGHT}
    units = {"MiB": 1024 * 1024}
    rows = _table("study-file.md", "limit")
    assert len(rows) == len(by_row)
    for name, value, _ in rows:
        want = next(v for prefix, v in by_row.items() if name.startswith(prefix))
        number, _, unit = value.lstrip("±").split(" (")[0].partition(" ")
        assert float(number.replace(",", "")) * units.get(unit, 1) == want, name


def test_xyz_help_names_the_built_in_defaults():
    import click

    from expressiongrid.cli import main
    from expressiongrid.config import BUILTIN_DEFAULTS

    params = {p.name: p for p in main.get_command(click.Context(main), "xyz").params}
    assert f'else "{BUILTIN_DEFAULTS["sampler"]}"' in params["sampler"].help
    assert f'else {BUILTIN_DEFAULTS["dtype"]}' in params["dtype"].help
