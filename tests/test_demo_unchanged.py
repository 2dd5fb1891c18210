"""The demo's reference column makes the same cell keys, pixels and metadata as an earlier version.

``tests/data/demo_reference_run/`` is a run folder (``run.sqlite`` and ``cells/``) that expressiongrid
0.1.0 wrote for the demo study with only its reference column: nine cells, byte-identical to the
reference column of ``expressiongrid demo``. Same keys mean an existing run folder resumes instead of
starting over; same pixels and metadata mean nothing a user sees changed. The LoRA and embedding columns are left
out: their demo files are generated afresh per demo folder and are not byte-identical between
generations (safetensors metadata order, torch's serialisation id), so their keys differ per folder.

Pixels are compared with a small tolerance (at most 2 of 255 per channel): float kernels may differ by a
rounding step between CPU types. A change of prompt, seed, sampler, noise or model moves pixels by far
more than that.
"""

from __future__ import annotations

import pytest
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from expressiongrid.cli.run import DEMO_STUDY
from expressiongrid.output.images import read_parameters
from expressiongrid.output.run_grids import compose_grids
from expressiongrid.run.runner import run_study
from expressiongrid.store import Store
from expressiongrid.study.study import load_study

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

OLD_RUN = Path(__file__).parent / "data" / "demo_reference_run"


def _reference_only_demo(tmp_path: Path) -> Path:
    text = DEMO_STUDY.format(steps=10)
    files_line = 'files = ["characters/demo-lora.toml", "characters/demo-embedding.toml"]'
    assert files_line in text
    path = tmp_path / "demo-study.toml"
    path.write_text(text.replace(files_line, "files = []"), encoding="utf-8")
    return path


def _old_cells(tmp_path: Path) -> dict[str, Path]:
    # Opening a store migrates it: read a copy, so the checked-in folder stays the earlier version's.
    old = tmp_path / "old_read"
    shutil.copytree(OLD_RUN, old)
    with Store.open_existing(old) as store:
        return {c.key: old / c.file for c in store.cells()}


def test_demo_reference_column_keeps_its_keys_pixels_and_metadata(tmp_path):
    expected = _old_cells(tmp_path)
    assert len(expected) == 9
    out = tmp_path / "out"
    summary = run_study(load_study(_reference_only_demo(tmp_path)), out)
    assert summary.exit_code == 0 and summary.made == 9
    with Store.open_existing(out) as store:
        cells = {c.key: c for c in store.cells()}
    assert sorted(cells) == sorted(expected)  # same keys: old run folders resume
    for key, old in expected.items():
        new = out / cells[key].file
        with Image.open(old) as a, Image.open(new) as b:
            diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
        assert diff.max() <= 2, f"cell {key} ({cells[key].row_id}) changed by up to {diff.max()}"
        # One intended change since 0.1.0: "Schedule type" is always written, as A1111 1.10 writes it
        old_text = read_parameters(old)
        assert "Schedule type" not in old_text
        assert read_parameters(new) == old_text.replace("Sampler: Euler a, ", "Sampler: Euler a, Schedule type: Automatic, ")
        assert cells[key].metadata is not None  # stored as data, not only as text
    # The grid's text from the new cells' metadata equals the one composed from the old cells' text.
    old_copy = tmp_path / "old"
    shutil.copytree(OLD_RUN, old_copy)
    (old_grid,), _ = compose_grids(old_copy)
    (new_grid,) = summary.grids
    assert read_parameters(new_grid) == read_parameters(old_grid)


def test_a_run_folder_written_by_the_earlier_version_resumes_without_making_anything(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(OLD_RUN, out)
    again = run_study(load_study(_reference_only_demo(tmp_path)), out)
    assert (again.made, again.skipped, again.failed) == (0, 9, 0)
    with Store.open_existing(out) as store:
        assert {c.key: c.status for c in store.cells()} == {key: "done" for key in _old_cells(tmp_path)}
    (grid,) = again.grids
    assert "Seed: 1234" in read_parameters(grid)
