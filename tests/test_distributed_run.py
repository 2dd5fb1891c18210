"""`accelerate launch -m expressiongrid run STUDY` with two processes equals a single-process run."""

from __future__ import annotations

import subprocess
import sqlite3

import numpy as np

from test_distributed import accelerate_command, accelerate_env, free_port
from test_resume import ROOT, cells, cli_env, demo_characters, done_images, open_verified, run_cli, write_study


def test_two_processes_split_the_columns_and_the_result_equals_a_single_process_run(tmp_path):
    characters = demo_characters(tmp_path)
    study = write_study(tmp_path, "shared", characters, rows=("neutral", "smiling"))
    launched = tmp_path / "launched"
    env = {**accelerate_env(tmp_path), **{k: v for k, v in cli_env().items() if k.startswith(("EXPRESSIONGRID", "PYTHON"))}}
    proc = subprocess.run([*accelerate_command(2, free_port()), "-m", "expressiongrid", "run", str(study),
                           "--out", str(launched)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_cli("run", str(study), "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-2000:]

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
    expected, got = done_images(tmp_path / "single"), done_images(launched)
    assert got.keys() == expected.keys() and len(got) == 6
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    assert np.array_equal(open_verified(launched / "grids" / "shared.png"),
                          open_verified(tmp_path / "single" / "grids" / "shared.png"))
