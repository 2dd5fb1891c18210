"""Crash-safe resume: real runs of the tiny model killed with SIGKILL at several moments, then finished.

Also holds the helpers the other overnight tests (faults, queue, distributed) import: a small study on the
tiny model with generated character files, running the CLI as a child process, reading the run store.
"""

from __future__ import annotations

import pytest
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from helpers import ROOT, cells, cli_env, db_counts, demo_characters, done_images, open_verified, run_cli, write_study

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "expressiongrid", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env or cli_env(), cwd=ROOT, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 90) -> None:
    """SIGKILL the run (its whole process group) as soon as `ready()` is true; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill the run"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


# A test-only hook loaded by the child interpreter (sitecustomize): pauses the Nth cell PNG write just before
# or just after its rename, and says so through a marker file, so the test can SIGKILL the run mid-write.
_PAUSE_HOOK = textwrap.dedent(
    """
    import os, time
    _phase = os.environ.get("EG_TEST_PAUSE_PHASE")
    if _phase:
        _at, _marker, _real, _seen = int(os.environ["EG_TEST_PAUSE_AT"]), os.environ["EG_TEST_PAUSE_MARKER"], os.replace, [0]
        def _replace(src, dst, *args, **kwargs):
            target = str(dst)
            if not (target.endswith(".png") and os.sep + "cells" + os.sep in target):
                return _real(src, dst, *args, **kwargs)
            _seen[0] += 1
            if _seen[0] == _at and _phase == "before":
                open(_marker, "w").write(str(src))
                time.sleep(60)
            result = _real(src, dst, *args, **kwargs)
            if _seen[0] == _at and _phase == "after":
                open(_marker, "w").write(target)
                time.sleep(60)
            return result
        os.replace = _replace
    """
)


def test_sigkill_at_any_moment_then_resume_gives_every_cell_once_and_identical_images(tmp_path):
    characters = demo_characters(tmp_path)
    # Batch size 1: batched and single images differ by rounding (~1e-6, sometimes 1/255 in a PNG), and a
    # resumed column is batched differently, so "identical" is checked where it can hold bit for bit.
    study = write_study(tmp_path, "resume", characters, batch_size=1)
    reference = run_cli("run", str(study), "--out", str(tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = done_images(tmp_path / "uninterrupted")
    total = len(expected)
    assert total == 9

    out = tmp_path / "killed"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_PAUSE_HOOK)
    args = ("run", str(study), "--out", str(out))

    # 1. Killed after the plan was registered, before any cell was finished.
    kill_when(start_cli(*args), lambda: db_counts(out).get("pending", 0) == total)
    assert db_counts(out).get("done", 0) < total

    # 2. Killed after three cells were done.
    kill_when(start_cli(*args), lambda: db_counts(out).get("done", 0) >= 3)
    after_two = db_counts(out)
    assert 3 <= after_two.get("done", 0) < total

    # 3. Killed mid-write: the PNG is complete in its temp file but not yet renamed into place.
    marker = tmp_path / "paused-before-rename"
    env = cli_env(PYTHONPATH=str(hooks), EG_TEST_PAUSE_PHASE="before", EG_TEST_PAUSE_AT="2",
                  EG_TEST_PAUSE_MARKER=str(marker))
    kill_when(start_cli(*args, env=env), marker.exists)
    assert Path(marker.read_text()).exists(), "the temp file of the interrupted write should be left behind"

    # 4. Killed between the rename and the database update: a PNG on disk that the store does not count.
    marker = tmp_path / "paused-after-rename"
    env = cli_env(PYTHONPATH=str(hooks), EG_TEST_PAUSE_PHASE="after", EG_TEST_PAUSE_AT="1",
                  EG_TEST_PAUSE_MARKER=str(marker))
    kill_when(start_cli(*args, env=env), marker.exists)
    orphan = Path(marker.read_text())
    assert orphan.exists()
    assert {c["file"] for c in cells(out) if c["status"] == "done"}.isdisjoint({str(orphan.relative_to(out))})

    # 5. A "done" PNG cut short (what a crash on a file system without atomic renames leaves).
    done_file = out / next(c["file"] for c in cells(out) if c["status"] == "done")
    done_file.write_bytes(done_file.read_bytes()[: done_file.stat().st_size // 2])
    assert db_counts(out).get("done", 0) < total

    final = run_cli(*args)
    assert final.returncode == 0, final.stderr[-2000:]

    rows = cells(out)
    assert len(rows) == total and {r["status"] for r in rows} == {"done"}
    assert len({r["key"] for r in rows}) == total
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())
    assert on_disk == sorted(r["file"] for r in rows), "every cell exactly once, no temp files or strays"
    got = done_images(out)  # every PNG opens and passes PIL's verify()
    assert got.keys() == expected.keys()
    for key, pixels in expected.items():
        assert np.array_equal(got[key], pixels), f"cell {key} differs from the uninterrupted run"
    grid = open_verified(out / "grids" / "resume.png")
    assert np.array_equal(grid, open_verified(tmp_path / "uninterrupted" / "grids" / "resume.png"))
    log = (out / "run.log").read_text()
    assert log.count("run started:") == 5  # every attempt is in the one log
