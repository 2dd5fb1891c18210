"""``expressiongrid judge``: serving from the command line, the loopback default, and --rankings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner
from test_judge_web import make_run

from expressiongrid.cli import main
from expressiongrid.judge.app import JudgeApp


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "expressiongrid", "judge", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    return proc, line


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return out, err


def test_judge_serves_on_loopback_by_default(tmp_path):
    make_run(tmp_path / "run").close()
    proc, line = _start([str(tmp_path / "run"), "--port", "0", "--judge", "ann"])
    try:
        assert line.startswith("Judging "), line
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as resp:
            page = resp.read().decode()
        assert "Judge this run" in page and 'value="ann"' in page
        assert "7 questions" in line
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert "stopped; 0 answers stored" in out
    assert "warning" not in err


def test_listening_beyond_this_machine_warns(tmp_path):
    make_run(tmp_path / "run").close()
    proc, line = _start([str(tmp_path / "run"), "--port", "0", "--host", "0.0.0.0"])
    try:
        assert "http://0.0.0.0:" in line
    finally:
        out, err = _stop(proc)
    assert "warning: listening on 0.0.0.0" in err


def test_rankings_flag_prints_json(tmp_path):
    store = make_run(tmp_path / "run")
    app = JudgeApp(store, seed=0)
    shown = app.next_pair("ann", "expr:smile:p0")
    app.answer(shown.token, "right")
    store.close()
    result = CliRunner().invoke(main, ["judge", str(tmp_path / "run"), "--rankings"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    smile = next(q for q in data["questions"] if q["id"] == "expr:smile:p0")
    assert smile["answers"] == 1 and smile["items"][0]["key"] == shown.right


def test_missing_run_and_busy_port_are_one_line_errors(tmp_path):
    result = CliRunner().invoke(main, ["judge", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no run in" in result.output
    make_run(tmp_path / "run").close()
    proc, line = _start([str(tmp_path / "run"), "--port", "0"])
    try:
        port = line.split("127.0.0.1:", 1)[1].split("/", 1)[0]
        result = CliRunner().invoke(main, ["judge", str(tmp_path / "run"), "--port", port])
        assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    finally:
        _stop(proc)


def test_a_run_with_nothing_to_judge_says_so(tmp_path):
    make_run(tmp_path / "run", rows=[("neutral", "neutral")], cols=[("reference", "Reference")]).close()
    started = time.time()
    result = CliRunner().invoke(main, ["judge", str(tmp_path / "run"), "--port", "0"])
    assert result.exit_code == 1 and "nothing to judge" in result.output
    assert time.time() - started < 30
