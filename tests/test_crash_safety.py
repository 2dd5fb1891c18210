"""SIGKILL at random moments, many times, through every way a study runs: `run`, `queue run` and a
two-process `accelerate launch`. After the kills a plain resume must leave every cell exactly once, no stray
file in the run folder, and pixels identical to an uninterrupted run (all at batch size 1, where identical
can hold bit for bit: see docs/engine.md on batch composition).

Slow (a few minutes: every attempt starts a fresh interpreter), so it is marked ``slow`` and stays out of
the quick subset.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_resume import ROOT, cells, cli_env, db_counts, demo_characters, done_images, run_cli, write_study
from test_run_launch import accelerate_command, accelerate_env, free_port
from test_run_launch_processes import _kill_processes_writing_to

pytestmark = pytest.mark.slow

ROWS = ("neutral", "smiling", "angry", "sad")  # 4 rows x 3 columns = 12 cells


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The study, an uninterrupted run of it, and that run's timing: seconds until its first cell was
    done (interpreter start, imports, model load) and seconds for all the cells after that."""
    folder = tmp_path_factory.mktemp("crash")
    characters = demo_characters(folder)
    study = write_study(folder, "crash", characters, rows=ROWS, steps=3, batch_size=1)
    reference = folder / "uninterrupted"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "expressiongrid", "run", str(study), "--out", str(reference)],
                            env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    boot = None
    while proc.poll() is None:
        if boot is None and db_counts(reference).get("done", 0) >= 1:
            boot = time.monotonic() - started
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    total = time.monotonic() - started
    boot = boot if boot is not None else total / 2
    return study, reference, (boot, max(total - boot, 1.0))


def _done(out: Path) -> int:
    """Cells done in the folder, whichever run (or launch process) made them; 0 before the store exists."""
    import sqlite3

    db = out / "run.sqlite"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _kill_all(proc: subprocess.Popen, out: Path) -> None:
    """The process group and every process whose command line names the run folder (launch workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _kill_processes_writing_to(out)
    proc.wait(timeout=60)


def _kill_at_random_moments(start, out: Path, kills: int, timing: tuple[float, float], rng: random.Random) -> int:
    """Start the run again and again, each time SIGKILLed at a random moment; returns the kills made.

    A third of the kills come during start-up (interpreter, imports, model load: a random time, or at once
    when a first new cell appears); the others once one or two more cells are done, a random fraction of a
    cell later (while the next image is denoised or its PNG and row are being written). The run is never
    allowed to finish: the last three cells are left for the resume.
    """
    boot, work = timing
    per_cell = work / 12
    made = 0
    for _ in range(kills):
        before = _done(out)
        proc = start()
        deadline = time.monotonic() + 600
        if rng.random() < 1 / 3 or before >= 9:
            until = time.monotonic() + boot * rng.uniform(0.2, 1.0)
            moment = lambda: time.monotonic() >= until or _done(out) > before
        else:
            target = before + rng.randint(1, min(2, 9 - before))
            moment = lambda: _done(out) >= target
        while not moment():
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the moment to kill it"
            assert time.monotonic() < deadline, "timed out waiting for the moment to kill the run"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5) * per_cell)
        _kill_all(proc, out)
        made += 1
    return made


def _check_folder(out: Path, reference: Path) -> None:
    rows = cells(out)
    assert {c["status"] for c in rows} == {"done"} and len(rows) == len(cells(reference)) == 12
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())
    assert on_disk == sorted(c["file"] for c in rows)  # each cell once, no temp or orphan files
    stray = [p for p in out.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.endswith(("-wal", "-shm")))]
    assert stray == []
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert grids == sorted(p.name for p in (reference / "grids").iterdir())
    expected, got = done_images(reference), done_images(out)
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_random_kills_across_run_queue_and_accelerate_then_resume_loses_and_duplicates_nothing(setup, tmp_path):
    study, reference, (boot, work) = setup
    rng = random.Random(20261201)
    env = cli_env()
    total_kills = 0

    # 1. `expressiongrid run`
    out = tmp_path / "run"
    start = lambda: subprocess.Popen([sys.executable, "-m", "expressiongrid", "run", str(study), "--out", str(out)],
                                     env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    total_kills += _kill_at_random_moments(start, out, 9, (boot, work), rng)
    assert run_cli("run", str(study), "--out", str(out)).returncode == 0
    _check_folder(out, reference)

    # 2. `expressiongrid queue run` (the queue runner and the study it started die together)
    out = tmp_path / "queued"
    queue_env = {**env, "EXPRESSIONGRID_HOME": str(tmp_path / "home")}
    added = subprocess.run([sys.executable, "-m", "expressiongrid", "queue", "add", str(study), "--out", str(out)],
                           env=queue_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr[-2000:]
    start = lambda: subprocess.Popen([sys.executable, "-m", "expressiongrid", "queue", "run"], env=queue_env,
                                     cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    total_kills += _kill_at_random_moments(start, out, 7, (boot * 1.3, work), rng)  # two interpreters start
    resumed = subprocess.run([sys.executable, "-m", "expressiongrid", "queue", "run"], env=queue_env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _check_folder(out, reference)

    # 3. `accelerate launch` with two processes (launcher and both workers killed at once)
    out = tmp_path / "launched"
    launch_env = {**accelerate_env(tmp_path),
                  **{k: v for k, v in env.items() if k.startswith(("EXPRESSIONGRID", "PYTHON"))}}

    def start():
        command = [*accelerate_command(2, free_port()), "-m", "expressiongrid", "run", str(study), "--out", str(out)]
        return subprocess.Popen(command, env=launch_env, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    total_kills += _kill_at_random_moments(start, out, 7, (boot * 2, work), rng)  # launcher + two workers
    command = [*accelerate_command(2, free_port()), "-m", "expressiongrid", "run", str(study), "--out", str(out)]
    final = subprocess.run(command, env=launch_env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    _check_folder(out, reference)

    assert total_kills >= 20
    assert _done(out) == 12
