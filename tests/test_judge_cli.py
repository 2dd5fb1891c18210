"""``expressiongrid judge``: serving from the command line, the loopback default, and --rankings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

from click.testing import CliRunner
from PIL import Image
from helpers import make_run

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
    assert result.exit_code == 2 and "no run in" in result.output
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
    result = CliRunner().invoke(main, ["judge", str(tmp_path / "run"), "--port", "0"])  # returns, does not serve
    assert result.exit_code == 1 and "nothing to judge" in result.output


STUDY = """
[model]
source = "tiny"
[sampling]
steps = 2
width = 64
height = 64
seed = 7
[prompt]
positive = "closeup of woman facing viewer, [hair, neck, eyes, lips: {expression}: 0.2], RAW photo, 1girl"
negative = "cartoon"
[rows]
axis = "expressions"
items = ["neutral face expression", "smiling", "angry"]
[columns]
axis = "CFG Scale"
values = "5, 9"
"""


def test_a_real_tiny_run_is_judged_and_ranked(tmp_path):
    """The whole path: the runner makes real cells with the tiny model, the judge serves and ranks them."""
    from expressiongrid.run.runner import run_study
    from expressiongrid.store import Store
    from expressiongrid.study.study import load_study

    (tmp_path / "study.toml").write_text(STUDY, encoding="utf-8")
    run_study(load_study(tmp_path / "study.toml"), tmp_path / "out")
    with Store.open_existing(tmp_path / "out") as store:
        app = JudgeApp(store, seed=0)
        ids = {q.id for q in app.questions}
        assert {"expr:smiling:p0", "expr:angry:p0"} <= ids
        # The free-text neutral row is still found as the identity reference.
        ident = next(q for q in app.questions if q.kind == "identity")
        neutral = store.cell(ident.reference_key)
        assert neutral.row_label == "neutral face expression"
        assert sorted(ident.labels.values()) == ["angry", "smiling"]
        with Image.open(app.cell_path(ident.items[0])) as im:
            assert im.size == (64, 64)
        shown = app.next_pair("ann", "expr:smiling:p0")
        app.answer(shown.token, "left")
    result = CliRunner().invoke(main, ["judge", str(tmp_path / "out"), "--rankings"])
    assert result.exit_code == 0, result.output
    smiling = next(q for q in json.loads(result.output)["questions"] if q["id"] == "expr:smiling:p0")
    assert smiling["items"][0]["key"] == shown.left and smiling["answers"] == 1


def test_judging_does_not_import_torch(tmp_path):
    make_run(tmp_path / "run").close()
    code = ("import sys\nfrom expressiongrid.cli import main\n"
            f"try:\n    main(['judge', {str(tmp_path / 'run')!r}, '--rankings'])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "from expressiongrid.judge import app, server\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
