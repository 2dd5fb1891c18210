"""The runner on the tiny model: crash safety, seeds per cell, pages, axes that reload the model, grids."""

from __future__ import annotations

import pytest
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from PIL import Image

from expressiongrid.study.plan import plan
from expressiongrid.output.run_grids import compose_grids
from expressiongrid.run.runner import run_study
from expressiongrid.store import Store, is_complete_png
from expressiongrid.study.study import load_study

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, body: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


BASE = """
    name = "{name}"
    [model]
    source = "tiny"
    [sampling]
    steps = {steps}
    width = 64
    height = 64
    seed = 5
    {sampling}
    [prompt]
    positive = "a woman, [face: {{expression}}: 0.2]"
    negative = "blurry"
    [rows]
    axis = "expressions"
    items = [{rows}]
    [columns]
    {columns}
    {more}
"""


def _study(tmp_path, *, name="t", steps=2, sampling="", rows='"smiling", "sad"', columns='axis = "Nothing"', more="",
           file="study.toml"):
    return _write(tmp_path, BASE.format(name=name, steps=steps, sampling=sampling, rows=rows, columns=columns,
                                        more=more), name=file)


def _run_until_cells_are_done(tmp_path, n: int, at_least: int):
    """Start `expressiongrid run` of an n-row study (batch 1, 30 steps each: enough work that a signal
    lands mid-run even on a fast machine) in a process; return (process, study, out) once `at_least`
    cells are done."""
    rows = ", ".join(f'"expression {i}"' for i in range(n))
    study = _study(tmp_path, steps=30, rows=rows)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EXPRESSIONGRID_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "expressiongrid", "run", str(study), "--out", str(out),
                             "--batch-size", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "run.sqlite").exists():
            try:
                conn = sqlite3.connect(out / "run.sqlite", timeout=5)
                done = conn.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                done = 0
            if done >= at_least:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be stopped: {proc.stderr.read().decode()[-2000:]}"
    return proc, study, out


def test_sigkill_mid_run_leaves_only_complete_done_cells_and_resumes(tmp_path):
    n = 16
    proc, study, out = _run_until_cells_are_done(tmp_path, n, at_least=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    with Store.open_existing(out) as store:
        cells = store.cells()
        done_cells = [c for c in cells if c.status == "done"]
        assert 2 <= len(done_cells) < n
        assert all(is_complete_png(out / c.file) for c in done_cells)  # done means a complete file
        assert store.runs()[-1].status == "running"  # killed: it never got to record an end
    # `runs show` and `runs list` in the morning: the process named beside run.lock is gone
    from click.testing import CliRunner

    from expressiongrid.cli import main

    shown = CliRunner().invoke(main, ["runs", "show", str(out)])
    assert shown.exit_code == 0 and " interrupted" in shown.output.splitlines()[3], shown.output
    listed = CliRunner().invoke(main, ["runs", "list", str(tmp_path), "--json"])
    assert [r["status"] for r in __import__("json").loads(listed.output)] == ["interrupted"]

    summary = run_study(load_study(study), out)
    assert summary.skipped == len(done_cells)
    assert summary.made == n - len(done_cells)
    assert summary.failed == 0
    with Store.open_existing(out) as store:
        assert store.counts() == {"pending": 0, "done": n, "failed": 0}
        for c in store.cells():
            with Image.open(out / c.file) as im:
                im.load()


def test_resumed_cells_equal_a_fresh_run(tmp_path):
    """A cell made in a second run is the same image a single uninterrupted run makes."""
    study = _study(tmp_path, rows='"smiling", "sad", "angry"')
    one = run_study(load_study(study), tmp_path / "a")
    assert one.made == 3
    partial = _study(tmp_path, rows='"smiling"', file="partial.toml")
    run_study(load_study(partial), tmp_path / "b")
    second = run_study(load_study(study), tmp_path / "b")
    assert (second.made, second.skipped) == (2, 1)
    with Store.open_existing(tmp_path / "a") as a, Store.open_existing(tmp_path / "b") as b:
        files_a = {c.key: c.file for c in a.cells()}
        files_b = {c.key: c.file for c in b.cells()}
    assert files_a.keys() == files_b.keys()
    for key in files_a:
        ia = Image.open(tmp_path / "a" / files_a[key]).convert("RGB")
        ib = Image.open(tmp_path / "b" / files_b[key]).convert("RGB")
        diff = max(abs(x - y) for pa, pb in zip(ia.get_flattened_data(), ib.get_flattened_data()) for x, y in zip(pa, pb))
        assert diff <= 2  # batched vs single CPU kernels differ by ~1e-6 before quantisation


def test_several_seeds_per_cell_and_pages(tmp_path):
    study = _study(tmp_path, name="multi", sampling='seed_policy = "per-cell"\nseeds_per_cell = 2',
                   columns='axis = "CFG Scale"\nvalues = "5,9"', more='[pages]\naxis = "Steps"\nvalues = "1,2"')
    s = load_study(study)
    summary = run_study(s, tmp_path / "out")
    assert summary.made == 2 * 2 * 2 * 2  # rows x columns x pages x seeds
    names = sorted(p.name for p in summary.grids)
    assert names == ["multi-page1.png", "multi-page2.png"]
    with Store.open_existing(tmp_path / "out") as store:
        seeds = sorted({c.seed for c in store.cells()})
        steps = sorted({c.steps for c in store.cells()})
    assert seeds == [5, 6] and steps == [1, 2]
    with Image.open(summary.grids[0]) as page1:
        # each cell holds its two samples side by side: wider than two plain 64 px columns
        assert page1.width > 2 * 2 * 64
        assert "Z Type: Steps" in page1.info["parameters"]


def test_clip_skip_axis_loads_each_model_once_and_changes_the_image(tmp_path, monkeypatch):
    import expressiongrid.engine.loading as loading

    loads = []
    real = loading.load_model

    def counting(spec):
        loads.append(spec.clip_skip)
        return real(spec)

    monkeypatch.setattr(loading, "load_model", counting)
    study = _study(tmp_path, columns='axis = "Clip skip"\nvalues = "1,2"')
    summary = run_study(load_study(study), tmp_path / "out")
    assert summary.made == 4
    assert sorted(loads) == [1, 2]  # the model axis is the outer loop: one load per value
    with Store.open_existing(tmp_path / "out") as store:
        by_col = {}
        for c in store.cells():
            by_col.setdefault(c.col_index, []).append(Image.open(tmp_path / "out" / c.file).tobytes())
            assert ("Clip skip: 2" in c.parameters) == (c.col_index == 1)
    assert by_col[0][0] != by_col[1][0]


def test_compose_grids_alone_rebuilds_the_grid(tmp_path):
    study = _study(tmp_path, name="g")
    summary = run_study(load_study(study), tmp_path / "out")
    grid = summary.grids[0]
    first = Image.open(grid).tobytes()
    grid.unlink()
    grids, copies = compose_grids(tmp_path / "out")
    assert grids == [grid] and Image.open(grid).tobytes() == first
    assert copies and copies[0].suffix == ".jpg"


def test_plan_order_is_columns_outermost_for_characters(tmp_path):
    """Characters are the costly axis after checkpoints: each column is made in one go."""
    study = _write(tmp_path, """
        [prompt]
        positive = "{expression}, {character}"
        reference = "1girl"
        [sampling]
        width = 64
        height = 64
        [rows]
        axis = "expressions"
        items = ["a", "b", "c"]
        [columns]
        axis = "characters"
        reference = true
        files = ["chars/*.toml"]
    """)
    chars = tmp_path / "chars"
    chars.mkdir()
    (chars / "plain.toml").write_text('label = "plain"\ntext = "a plain woman"\n')
    (chars / "tall.toml").write_text('label = "tall"\ntext = "a tall woman"\n')
    p = plan(load_study(study))
    cols = [c.col_index for c in p.cells]
    assert cols == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # all of column 0, then all of column 1, ...
    assert [c.spec.prompt for c in p.cells[3:6]] == ["a, a plain woman", "b, a plain woman", "c, a plain woman"]


def test_checkpoint_axis_loads_each_model_once(tmp_path, monkeypatch):
    """Two diffusers folders on the columns: outermost loop, one load each, names in the metadata."""
    import torch

    import expressiongrid.engine.loading as loading
    from expressiongrid.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model_a")
    with torch.no_grad():
        for param in pipe.unet.parameters():
            param.mul_(1.05)
    pipe.save_pretrained(tmp_path / "model_b")

    loads = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda spec: loads.append(Path(spec.source).name) or real(spec))
    study = _study(tmp_path, columns='axis = "Checkpoint name"\nvalues = "model_a, model_b"',
                   rows='"smiling", "sad", "angry"')
    s = load_study(study)
    p = plan(s)
    assert p.loop_order[0] == "x"  # the checkpoint axis (cost 1.0) is the outer loop
    assert [v.label for v in s.columns.values] == ["model_a", "model_b"]
    summary = run_study(s, tmp_path / "out", plan=p)
    assert summary.made == 6 and loads == ["model_a", "model_b"]
    with Store.open_existing(tmp_path / "out") as store:
        cells = store.cells()
    for c in cells:
        assert f"Model: model_{'ab'[c.col_index]}" in c.parameters
    first = {c.col_index: Image.open(tmp_path / "out" / c.file).tobytes() for c in cells if c.row_index == 0}
    assert first[0] != first[1]


def test_lora_weight_axis_scales_the_characters_lora(tmp_path):
    from expressiongrid.characters.demo import make_demo_characters
    from expressiongrid.tiny import build_tiny_pipeline

    make_demo_characters(build_tiny_pipeline(), tmp_path / "chars")
    study = _write(tmp_path, """
        [model]
        source = "tiny"
        [sampling]
        steps = 2
        width = 64
        height = 64
        seed = 9
        [prompt]
        positive = "a woman, {character}"
        [rows]
        axis = "characters"
        files = ["chars/demo-lora.toml"]
        [columns]
        axis = "LoRA weight"
        values = "0, 0.5, 1"
    """)
    s = load_study(study)
    assert [v.label for v in s.columns.values] == ["LoRA weight: 0.0", "LoRA weight: 0.5", "LoRA weight: 1.0"]
    p = plan(s)
    weights = [c.key_inputs["character"]["loras"][0][1] for c in p.cells]
    assert weights == [0.0, 0.5, 1.0]
    assert len({c.key for c in p.cells}) == 3
    seen = []

    def progress(done, total, note):
        seen.append((done, total))

    summary = run_study(s, tmp_path / "out", progress, plan=p)
    assert summary.made == 3
    assert seen[-1] == (3, 3) and all(d <= t for d, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # progress only moves forward
    with Store.open_existing(tmp_path / "out") as store:
        images = [Image.open(tmp_path / "out" / c.file).tobytes() for c in sorted(store.cells(), key=lambda c: c.col_index)]
    assert len(set(images)) == 3  # each weight changes the picture


def test_rows_of_a_column_go_through_the_engine_together(tmp_path, monkeypatch):
    import expressiongrid.engine.generation as generation

    calls = []
    real = generation.generate

    def recording(model, requests, *args, **kwargs):
        calls.append([(r.prompt, r.seed) for r in requests])
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", recording)
    study = _study(tmp_path, rows='"a", "b", "c", "d"', columns='axis = "CFG Scale"\nvalues = "5, 9"')
    summary = run_study(load_study(study), tmp_path / "out", batch_size=8)
    assert summary.made == 8
    # no cost difference between the axes: A1111 nests rows outside columns, and the runner batches the
    # whole plan of one model/character activation: all 8 images in one engine call
    assert len(calls) == 1 and len(calls[0]) == 8
    calls.clear()
    run_study(load_study(_study(tmp_path, rows='"a", "b", "c", "d", "e"', columns='axis = "CFG Scale"\nvalues = "5, 9"',
                                file="more.toml")), tmp_path / "out", batch_size=8)
    assert [len(c) for c in calls] == [2]  # only the new row's two cells


def test_an_unexpected_engine_error_fails_only_that_column(tmp_path, monkeypatch):
    import expressiongrid.engine.generation as generation

    real = generation.generate

    def flaky(model, requests, *args, **kwargs):
        if any("tall" in r.prompt for r in requests):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (77x32 and 64x32)")
        return real(model, requests, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", flaky)
    chars = tmp_path / "chars"
    chars.mkdir()
    (chars / "plain.toml").write_text('label = "plain"\ntext = "a plain woman"\n')
    (chars / "tall.toml").write_text('label = "tall"\ntext = "a tall woman"\n')
    study = _write(tmp_path, """
        [sampling]
        steps = 2
        width = 64
        height = 64
        [prompt]
        positive = "{expression}, {character}"
        reference = "1girl"
        [rows]
        axis = "expressions"
        items = ["a", "b"]
        [columns]
        axis = "characters"
        reference = true
        files = ["chars/plain.toml", "chars/tall.toml"]
    """)
    summary = run_study(load_study(study), tmp_path / "out")
    assert (summary.made, summary.failed, summary.exit_code) == (4, 2, 1)
    assert {f.col_label for f in summary.failures} == {"tall"}
    assert all("RuntimeError: mat1 and mat2" in f.error for f in summary.failures)
    assert summary.grids  # the grid is still composed, the failed column marked
    with Store.open_existing(tmp_path / "out") as store:
        assert store.runs()[-1].status == "incomplete"
        assert {c.col_label for c in store.cells("failed")} == {"tall"}


def test_random_seed_is_kept_when_the_run_is_resumed(tmp_path):
    study = _study(tmp_path, sampling="", rows='"a", "b"')
    study.write_text(study.read_text().replace("seed = 5", "seed = -1"))
    first = run_study(load_study(study), tmp_path / "out")
    with Store.open_existing(tmp_path / "out") as store:
        seed = store.study_info()["base_seed"]
        assert {c.seed for c in store.cells()} == {seed}
    again = run_study(load_study(study), tmp_path / "out")  # e.g. after a crash: same grid, nothing new
    assert (first.made, again.made, again.skipped) == (2, 0, 2)
    elsewhere = run_study(load_study(study), tmp_path / "other")
    with Store.open_existing(tmp_path / "other") as store:
        assert store.study_info()["base_seed"] != seed  # a new folder draws a new seed, as A1111 does
    assert elsewhere.made == 2


def test_seeds_drawn_for_a_seed_axis_are_kept_when_the_run_is_resumed(tmp_path):
    from expressiongrid.output.infotext import parse_parameters

    study = _study(tmp_path, rows='"a"', columns='axis = "Seed"\nvalues = "-1, 7, -1"')
    first = run_study(load_study(study), tmp_path / "out")
    again = run_study(load_study(study), tmp_path / "out")  # a new draw would make both -1 columns again
    assert (first.made, again.made, again.skipped) == (3, 0, 3)
    with Store.open_existing(tmp_path / "out") as store:
        seeds = [c.seed for c in sorted(store.cells(), key=lambda c: c.col_index)]
    assert len(seeds) == 3 and seeds[1] == 7
    with Image.open(again.grids[0]) as grid:
        params = parse_parameters(grid.info["parameters"])
    assert (params["X Values"], params["Fixed X Values"]) == ("-1, 7, -1", ", ".join(map(str, seeds)))
    elsewhere = run_study(load_study(study), tmp_path / "other")  # a new folder draws anew, as A1111 does
    with Store.open_existing(tmp_path / "other") as store:
        assert [c.seed for c in sorted(store.cells(), key=lambda c: c.col_index)] != seeds
    assert elsewhere.made == 3
    # an edited axis keeps the seeds of the positions that were -1 and still are: only the new value is made
    study.write_text(study.read_text().replace('"-1, 7, -1"', '"-1,7,-1, 9"'))
    edited = run_study(load_study(study), tmp_path / "out")
    assert (edited.made, edited.skipped) == (1, 3)


def test_random_seed_is_kept_when_a_library_caller_resumes_through_run_launched(tmp_path):
    from expressiongrid.run.launch import run_launched

    study = _study(tmp_path, sampling="", rows='"a", "b"')
    study.write_text(study.read_text().replace("seed = 5", "seed = -1"))
    first = run_launched(load_study(study), tmp_path / "out", argv=[])
    again = run_launched(load_study(study), tmp_path / "out", argv=[])  # no plan given: it reads the seed
    assert (first.summary.made, again.summary.made, again.summary.skipped) == (2, 0, 2)
    with Store.open_existing(tmp_path / "out") as store:
        assert len({c.seed for c in store.cells()}) == 1


def test_split_grid_gets_one_upload_copy_of_the_whole_grid_with_axis_titles_and_caption(tmp_path):
    from expressiongrid.output.grid import GridOptions
    from expressiongrid.output.metadata import CellMetadata

    more = "[output]\nmax_cells_per_page = 2\naxis_titles = true\ncaption = true\nupload_copy = \"jpeg\""
    study = _study(tmp_path, name="split", rows='"smiling", "sad", "angry"', columns='axis = "CFG Scale"\nvalues = "5,9"',
                   more=more)
    summary = run_study(load_study(study), tmp_path / "out")
    assert sorted(p.name for p in summary.grids) == ["split-part1.png", "split-part2.png", "split-part3.png"]
    assert [p.name for p in summary.upload_copies] == ["split.upload.jpg"]
    with Image.open(summary.grids[0]) as part, Image.open(summary.upload_copies[0]) as whole:
        assert whole.size == (part.width, part.height + 2 * 64)  # all three rows of 64 px cells in one image
        parameters = part.info["parameters"]
    options = GridOptions.from_output({"caption": True, "axis_titles": True}, "expressions", "CFG Scale")
    assert (options.row_title, options.col_title) == ("Expression", "CFG Scale")
    caption = options.caption_text(CellMetadata.from_parameters(parameters))
    assert "Steps: 2" in caption and "Seed: 5" in caption and "Sampler:" in caption
    assert "CFG" not in caption  # the columns vary it: the labels say it, not the caption


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(tmp_path):
    """systemd stop, `kill` or torchrun: finished cells are kept, the run is recorded as interrupted, the
    lock's owner record is gone, and the same command resumes."""
    proc, study, out = _run_until_cells_are_done(tmp_path, 12, at_least=1)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130 and "interrupted: finished cells are kept" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not (out / "run.lock.json").exists()
    with Store.open_existing(out) as store:
        assert store.runs()[-1].status == "interrupted"
        done = store.counts()["done"]
    assert 1 <= done < 12
    again = run_study(load_study(study), out)
    assert (again.skipped, again.made, again.failed) == (done, 12 - done, 0)
