"""`accelerate launch -m expressiongrid run STUDY` with two processes equals a single-process run."""

from __future__ import annotations

import subprocess
import sqlite3
import textwrap

import numpy as np
import pytest
from PIL import Image

from expressiongrid.output.infotext import parse_parameters

from helpers import accelerate_command, accelerate_env, free_port
from helpers import ROOT, cells, cli_env, demo_characters, done_images, open_verified, run_cli, write_study

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory):
    """The study both tests launch, and its plain single-process run to compare with."""
    root = tmp_path_factory.mktemp("shared")
    study = write_study(root, "shared", demo_characters(root), rows=("neutral", "smiling"), batch_size=1)
    single = run_cli("run", str(study), "--out", str(root / "single"))
    assert single.returncode == 0, single.stderr[-2000:]
    return study, root / "single"


def test_two_processes_split_the_columns_and_the_result_equals_a_single_process_run(tmp_path, shared_study):
    study, single_out = shared_study
    launched = tmp_path / "launched"
    env = {**accelerate_env(tmp_path), **{k: v for k, v in cli_env().items() if k.startswith(("EXPRESSIONGRID", "PYTHON"))}}
    proc = subprocess.run([*accelerate_command(2, free_port()), "-m", "expressiongrid", "run", str(study),
                           "--out", str(launched)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Each process made its own columns: 1/2 took columns 0 and 2, 2/2 took column 1; each cell once.
    log = (launched / "run.log").read_text()
    assert "[process 1/2] expressiongrid: process 1/2 of the launch makes columns [0, 2]" in log
    assert "[process 2/2] expressiongrid: process 2/2 of the launch makes columns [1]" in log
    assert log.count("last process to finish: composing the grids") == 1
    conn = sqlite3.connect(launched / "run.sqlite")
    try:
        finishes = conn.execute("SELECT process_index, cells_done FROM shard_finishes ORDER BY process_index").fetchall()
        made_by_run = dict(conn.execute("SELECT col_label, COUNT(DISTINCT made_in_run) FROM cells GROUP BY col_label"))
    finally:
        conn.close()
    assert finishes == [(0, 4), (1, 2)]
    assert set(made_by_run.values()) == {1}  # every column made by a single process
    assert "study: 6 of 6 cells done, 0 failed" in proc.stderr

    # The same cells, pixel for pixel, and the same grid as a plain run.
    assert {c["status"] for c in cells(launched)} == {"done"}
    expected, got = done_images(single_out), done_images(launched)
    assert got.keys() == expected.keys() and len(got) == 6
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    assert np.array_equal(open_verified(launched / "grids" / "shared.png"),
                          open_verified(single_out / "grids" / "shared.png"))


def _kill_processes_writing_to(out_dir) -> None:
    """SIGKILL every process of a launch (launcher and workers, whatever their process groups)."""
    import os
    import signal
    from pathlib import Path

    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(out_dir).encode() in cmdline and int(proc.name) != os.getpid():
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_killed_launch_resumes_with_another_launch(tmp_path, shared_study):
    import time

    from helpers import db_counts

    study, single_out = shared_study

    out = tmp_path / "launched"
    env = {**accelerate_env(tmp_path), **{k: v for k, v in cli_env().items() if k.startswith(("EXPRESSIONGRID", "PYTHON"))}}
    command = [*accelerate_command(2, free_port()), "-m", "expressiongrid", "run", str(study), "--out", str(out)]
    first = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while db_counts(out).get("done", 0) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "the launch never made a cell"
        time.sleep(0.01)
    _kill_processes_writing_to(out)
    first.wait(timeout=30)
    assert db_counts(out).get("done", 0) < 6

    command[command.index("--main_process_port") + 1] = str(free_port())
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {c["status"] for c in cells(out)} == {"done"} and len(cells(out)) == 6
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())
    assert on_disk == sorted(c["file"] for c in cells(out))  # each cell once, no temp files left
    expected, got = done_images(single_out), done_images(out)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_random_seeds_drawn_by_the_main_process_are_every_process_seeds(tmp_path):
    """seed = -1 and a Seed axis with -1: each process plans on its own, yet every column of the launch
    uses the seeds the main process drew, and the grid says which (Fixed X Values)."""
    study = tmp_path / "random.toml"
    study.write_text(textwrap.dedent("""
        name = "random"
        [model]
        source = "tiny"
        [sampling]
        steps = 2
        width = 64
        height = 64
        seed = -1
        [prompt]
        positive = "a woman, {expression}"
        [rows]
        axis = "expressions"
        items = ["smiling"]
        [columns]
        axis = "Seed"
        values = "-1, 7, -1"
        [pages]
        axis = "CFG Scale"
        values = "5, 9"
    """), encoding="utf-8")
    out = tmp_path / "out"
    env = {**accelerate_env(tmp_path), **{k: v for k, v in cli_env().items() if k.startswith(("EXPRESSIONGRID", "PYTHON"))}}
    proc = subprocess.run([*accelerate_command(2, free_port()), "-m", "expressiongrid", "run", str(study),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = cells(out)
    assert len(done) == 6 and {c["status"] for c in done} == {"done"}
    seeds = {c["col_label"]: c["seed"] for c in done}
    assert len(seeds) == 3 and seeds["Seed: 7"] == 7
    with Image.open(out / "grids" / "random-page1.png") as grid:
        fixed = parse_parameters(grid.info["parameters"])["Fixed X Values"]
    drawn = [c["seed"] for c in sorted(done, key=lambda c: c["col_index"]) if c["page"] == 0]
    assert fixed == ", ".join(str(s) for s in drawn)
    # and a plain run resumed in that folder makes nothing new
    again = run_cli("run", str(study), "--out", str(out))
    assert again.returncode == 0 and "made 0" in again.stdout, again.stdout + again.stderr
