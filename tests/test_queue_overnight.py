"""The night in one test: two studies queued, the queue runner killed mid-study, started again, finished."""

from __future__ import annotations

import pytest
import os
import signal
import subprocess
import sys
import time

from helpers import ROOT, cells, cli_env, db_counts, demo_characters, done_images, make_misfit_lora, write_study

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _queue(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expressiongrid", "queue", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_queue_survives_a_kill_resumes_the_interrupted_study_and_records_outcomes(tmp_path):
    characters = demo_characters(tmp_path)
    make_misfit_lora(characters)
    good = write_study(tmp_path, "good", characters, files=("demo-embedding.toml",), rows=("neutral", "smiling"),
                       batch_size=1)
    partial = write_study(tmp_path, "partial", characters, files=("misfit_lora.safetensors",), rows=("neutral",))
    env = cli_env(EXPRESSIONGRID_HOME=str(tmp_path / "home"))
    added = _queue("add", str(good), str(partial), "--out", str(tmp_path / "runs"), env=env)
    assert added.returncode == 0, added.stderr
    good_out = tmp_path / "runs" / "good"

    # The machine "crashes" in the middle of the first study: the queue runner and its child die at once.
    runner = subprocess.Popen([sys.executable, "-m", "expressiongrid", "queue", "run"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while db_counts(good_out).get("done", 0) < 2:
        assert runner.poll() is None and time.monotonic() < deadline, "the first study never got going"
        time.sleep(0.01)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    assert db_counts(good_out).get("done", 0) < 4

    listed = _queue("list", env=env)
    assert "running (interrupted; `queue run` resumes it)" in listed.stdout
    assert listed.stdout.count("queued") == 1

    # After the "reboot": the same command resumes the interrupted study first, then runs the next one.
    resumed = _queue("run", env=env)
    assert resumed.returncode == 1, resumed.stderr[-2000:]  # one study incomplete
    assert "(resuming)" in resumed.stderr
    assert "queue: 1 done, 1 incomplete or failed" in resumed.stderr

    listed = _queue("list", "--json", env=env)
    import json

    good_entry, partial_entry = json.loads(listed.stdout)
    assert good_entry["state"] == "done" and good_entry["attempts"] == 2
    assert good_entry["outcome"] == "4 of 4 cells done"
    assert partial_entry["state"] == "incomplete" and partial_entry["exit_code"] == 1
    assert "column misfit_lora" in partial_entry["outcome"] and "does not fit" in partial_entry["outcome"]

    # The interrupted study has each cell exactly once, all readable.
    rows = cells(good_out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert len(done_images(good_out)) == 4
    assert len([p for p in (good_out / "cells").rglob("*") if p.is_file()]) == 4

    # Nothing left to do: a third `queue run` says so and succeeds.
    again = _queue("run", env=env)
    assert again.returncode == 0 and "nothing to run" in again.stderr
