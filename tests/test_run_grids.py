"""A run folder's grid states what its cells' stored metadata says: its A1111 text and its caption line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from PIL import Image

from expressiongrid.output.grid import compose_grid
from expressiongrid.output.infotext import parse_parameters
from expressiongrid.run.runner import run_study
from expressiongrid.store import Store
from expressiongrid.study.study import load_study
from expressiongrid.text import csv_split

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

ROWS = ["smiling, eyes: closed", "Zoë weint"]


def _study(tmp_path: Path, *, source: str = "tiny", sampler: str = "DPM++ 2M Karras", rows=ROWS,
           columns: str = 'axis = "CFG Scale"\nvalues = "5, 7.5"') -> Path:
    items = ", ".join(f'"{r}"' for r in rows)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(f"""
        name = "Zoë"
        title = "Zoë: Vergleich, klein"
        [model]
        source = "{source}"
        [sampling]
        sampler = "{sampler}"
        steps = 2
        width = 64
        height = 64
        seed = 3
        [prompt]
        positive = "a woman, {{expression}}"
        negative = "blurry, 2girls"
        [rows]
        axis = "expressions"
        items = [{items}]
        [columns]
        {columns}
        [output]
        caption = true
    """), encoding="utf-8")
    return path


def _cells_in_layout(out: Path):
    """The cells' stored records in grid order (rows, then columns), as the study made them."""
    with Store.open_existing(out) as store:
        by_key = {c.key: c for c in store.cells()}
        layout = store.study_info()["layout"]
    grid: dict[tuple[int, int], object] = {(row, col): by_key[key] for _, row, col, _, key in layout}
    n_rows, n_cols = max(r for r, _ in grid) + 1, max(c for _, c in grid) + 1
    return [[grid[(r, c)] for c in range(n_cols)] for r in range(n_rows)]


def _grid_as_drawn_with(out: Path, cells, cols: list[str], caption: str, rows=ROWS) -> bytes:
    images = [[Image.open(out / c.file).convert("RGB") for c in row] for row in cells]
    [page] = compose_grid(images, rows, cols, title="Zoë: Vergleich, klein", caption=caption)
    return page.tobytes()


def test_grid_text_and_caption_state_the_cells_data_with_commas_colons_and_non_ascii_labels(tmp_path):
    summary = run_study(load_study(_study(tmp_path)), tmp_path / "out")
    assert summary.exit_code == 0
    out = tmp_path / "out"
    cells = _cells_in_layout(out)
    first = cells[0][0].metadata  # the grid states its first cell's settings
    [grid_file] = summary.grids
    with Image.open(grid_file) as im:
        text = im.info["parameters"]
        drawn = im.convert("RGB").tobytes()

    grid = parse_parameters(text)
    assert grid["Prompt"] == first["prompt"] == "a woman, smiling, eyes: closed"
    assert grid["Negative prompt"] == first["negative_prompt"] == "blurry, 2girls"
    assert (grid["Steps"], grid["Seed"], grid["CFG scale"]) == (str(first["steps"]), str(first["seed"]),
                                                                str(first["cfg_scale"]))
    assert (grid["Sampler"], grid["Schedule type"]) == (first["sampler"], first["schedule_type"]) == ("DPM++ 2M",
                                                                                                      "Karras")
    assert (grid["Size"], grid["Model"]) == (f"{first['width']}x{first['height']}", first["model"])
    assert (grid["X Type"], grid["Y Type"]) == ("CFG Scale", "Expression")
    assert csv_split(grid["Y Values"]) == [row[0].row_label for row in cells] == ROWS
    cols = [c.col_label for c in cells[0]]
    assert cols == ["CFG Scale: 5.0", "CFG Scale: 7.5"]  # A1111's X/Y/Z plot labels

    # The columns vary CFG scale, so the caption leaves it out; the rest is the first cell's data.
    caption = f"Model: {first['model']} · Sampler: DPM++ 2M Karras · Steps: 2 · Seed: 3"
    assert drawn == _grid_as_drawn_with(out, cells, cols, caption)


def test_caption_names_a_model_whose_name_is_its_own_infotext_key(tmp_path):
    """A1111's text writes a value equal to its key bare (``Model``), so it cannot be read back as the model's
    name; the caption comes from the cells' data and still says ``Model: Model``."""
    from expressiongrid.tiny import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "Model")
    study = _study(tmp_path, source=(tmp_path / "Model").as_posix(), sampler="Euler a", rows=ROWS[:1],
                   columns='axis = "Nothing"')
    summary = run_study(load_study(study), tmp_path / "out")
    assert summary.exit_code == 0
    cells = _cells_in_layout(tmp_path / "out")
    assert cells[0][0].metadata["model"] == "Model"
    with Image.open(summary.grids[0]) as im:
        assert "Model: " not in im.info["parameters"]  # A1111's own convention for the text
        drawn = im.convert("RGB").tobytes()
    caption = "Model: Model · Sampler: Euler a · Steps: 2 · CFG scale: 7.0 · Seed: 3"
    assert drawn == _grid_as_drawn_with(tmp_path / "out", cells, [cells[0][0].col_label], caption, rows=ROWS[:1])
