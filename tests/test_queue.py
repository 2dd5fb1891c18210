"""The persistent queue: add/list/remove/run through the CLI, restart safety, one runner at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from expressiongrid.cli import main
from expressiongrid.errors import QueueError, UsageError
from expressiongrid.run.queue import StudyQueue, classify, run_command, run_queue


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("EXPRESSIONGRID_HOME", str(h))
    return h


_VALID_STUDY = """
name = "{name}"
[sampling]
steps = 2
width = 64
height = 64
seed = 1
[prompt]
positive = "a photo of a woman, {{expression}}"
[rows]
axis = "expressions"
values = ["neutral", "smiling"]
[columns]
axis = "CFG Scale"
values = "5,7"
"""


def _study(tmp_path: Path, name: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(_VALID_STUDY.format(name=name))
    return p


def test_add_list_remove_through_cli_and_persisted_on_disk(tmp_path, home):
    a, b = _study(tmp_path, "night1"), _study(tmp_path, "night2")
    runner = CliRunner()
    result = runner.invoke(main, ["queue", "add", str(a), str(b), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "queued #1" in result.output and "queued #2" in result.output

    # A new StudyQueue object (as after a reboot) reads the same entries from the database in EXPRESSIONGRID_HOME.
    entries = StudyQueue().entries()
    assert [Path(e.study).name for e in entries] == ["night1.toml", "night2.toml"]
    assert [e.state for e in entries] == ["queued", "queued"]
    assert entries[0].out_dir == str((tmp_path / "runs" / "night1").resolve())
    assert (home / "queue.sqlite").is_file()

    listed = runner.invoke(main, ["queue", "list"])
    assert listed.exit_code == 0
    assert "night1.toml" in listed.output and "queued" in listed.output

    as_json = json.loads(runner.invoke(main, ["queue", "list", "--json"]).output)
    assert [e["id"] for e in as_json] == [1, 2]

    removed = runner.invoke(main, ["queue", "remove", "1"])
    assert removed.exit_code == 0 and "removed #1" in removed.output
    assert [e.id for e in StudyQueue().entries()] == [2]

    missing = runner.invoke(main, ["queue", "remove", "99"])
    assert missing.exit_code == 2
    assert "no queue entry 99" in missing.output


def test_add_validates_the_study_now_and_fixes_the_default_output_folder(tmp_path, home, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text('[sampling]\nsteps = "many"\n')
    runner = CliRunner()
    result = runner.invoke(main, ["queue", "add", str(broken)])
    assert result.exit_code == 2 and "sampling.steps" in result.output
    assert StudyQueue().entries() == []  # nothing queued that would only fail at night
    # Without --out the run's default folder (out/<name>) is fixed against today's directory.
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(main, ["queue", "add", str(_study(tmp_path, "night"))]).exit_code == 0
    assert StudyQueue().entries()[0].out_dir == str(tmp_path.resolve() / "out" / "night")


def test_add_rejects_missing_file_and_bad_notify_url(tmp_path, home):
    runner = CliRunner()
    result = runner.invoke(main, ["queue", "add", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    study = _study(tmp_path, "s")
    result = runner.invoke(main, ["queue", "add", str(study), "--notify", "file:///etc/passwd"])
    assert result.exit_code == 2
    assert "http" in result.output
    with pytest.raises(UsageError):
        StudyQueue().add(tmp_path / "missing.toml")


def test_run_records_state_and_outcome_and_continues_after_a_failure(tmp_path, home):
    q = StudyQueue()
    ids = [q.add(_study(tmp_path, n)).id for n in ("ok", "broken", "partial")]
    answers = {
        "ok.toml": (0, ["finished: 12/12 cells done"]),
        "broken.toml": (1, ["error: study file is invalid"]),
        "partial.toml": (1, ["run incomplete: 10 done, 2 failed (column lora_b: corrupt file)"]),
    }
    seen = []

    def execute(entry):
        seen.append((Path(entry.study).name, q.get(entry.id).state))
        return answers[Path(entry.study).name]

    results = run_queue(q, execute=execute)
    assert [r.state for r in results] == ["done", "failed", "incomplete"]
    # Each entry was marked running before its study started.
    assert seen == [("ok.toml", "running"), ("broken.toml", "running"), ("partial.toml", "running")]
    states = {e.id: e for e in q.entries()}
    assert states[ids[0]].state == "done" and states[ids[0]].exit_code == 0
    assert states[ids[1]].state == "failed" and "study file is invalid" in states[ids[1]].outcome
    assert states[ids[2]].state == "incomplete" and "lora_b" in states[ids[2]].outcome
    assert all(e.started_at and e.finished_at and e.finished_at >= e.started_at for e in states.values())
    # Nothing left: a second run does nothing.
    assert run_queue(q, execute=execute) == []


def test_interrupted_entry_is_resumed_first(tmp_path, home):
    q = StudyQueue()
    first, second = q.add(_study(tmp_path, "a")), q.add(_study(tmp_path, "b"))
    # A runner started `b`... no: it started `a`, then the machine rebooted mid-study.
    q.mark_running(first.id, pid=999999)
    third = q.add(_study(tmp_path, "c"))
    order = []
    run_queue(StudyQueue(), execute=lambda e: (order.append(e.id), (0, ["ok"]))[1])
    assert order == [first.id, second.id, third.id]
    assert q.get(first.id).attempts == 2  # the interrupted attempt and the resumed one


def test_classify_exit_codes():
    assert classify(0, ["done"])[0] == "done"
    assert classify(1, ["run incomplete: 1 failed"])[0] == "incomplete"
    assert classify(1, ["error: no such model"]) == ("failed", "error: no such model")
    state, outcome = classify(-9, [])
    assert state == "failed" and "signal 9" in outcome


def test_run_command_is_the_plain_run_command(tmp_path, home):
    q = StudyQueue()
    e = q.add(_study(tmp_path, "s"), out_dir=tmp_path / "o", args=["--notify", "http://127.0.0.1:1/x"])
    cmd = run_command(e)
    assert cmd[1:4] == ["-m", "expressiongrid", "run"]
    assert cmd[4] == e.study and cmd[5:7] == ["--out", str((tmp_path / "o").resolve())]
    assert cmd[-2:] == ["--notify", "http://127.0.0.1:1/x"]


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from expressiongrid.run.queue import StudyQueue
    with StudyQueue().runner_lock():
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_second_queue_run_refuses_while_one_is_running_and_lock_dies_with_its_process(tmp_path, home):
    q = StudyQueue()
    entry = q.add(_study(tmp_path, "s"))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "EXPRESSIONGRID_HOME": str(home)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(QueueError, match="already working"):
            run_queue(q, execute=lambda e: (0, ["ok"]))
        result = CliRunner().invoke(main, ["queue", "run"])
        assert result.exit_code == 1 and "already working" in result.output
        q.mark_running(entry.id)
        # The live runner owns its entry: removing it now would pull the study from under it.
        with pytest.raises(QueueError, match="being run right now"):
            q.remove(entry.id)
        listed = CliRunner().invoke(main, ["queue", "list"])
        assert "interrupted" not in listed.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL released the OS lock: the interrupted entry is now shown as such and can be resumed.
    assert "interrupted" in CliRunner().invoke(main, ["queue", "list"]).output
    assert [r.state for r in run_queue(q, execute=lambda e: (0, ["ok"]))] == ["done"]


def test_two_queue_runs_started_at_once_run_each_study_once(tmp_path, home):
    q = StudyQueue()
    for n in ("a", "b"):
        q.add(_study(tmp_path, n))
    log = tmp_path / "ran.txt"
    # A fake "run" that is slow enough for the two runners to overlap; it appends the study it ran.
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from expressiongrid.errors import QueueError
        from expressiongrid.run.queue import StudyQueue, run_queue
        def execute(entry):
            with open({str(log)!r}, "a") as fh:
                fh.write(entry.study + "\\n")
            time.sleep(0.5)
            return 0, ["ok"]
        print("ready", flush=True)
        while not os.path.exists({str(tmp_path / "go")!r}):
            time.sleep(0.01)
        try:
            run_queue(StudyQueue(), execute=execute)
            print("ran")
        except QueueError:
            print("refused")
        """
    )
    env = {**os.environ, "EXPRESSIONGRID_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    # Both are imported and waiting before either may start: they really do start at the same moment.
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    (tmp_path / "go").touch()
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outputs == ["ran", "refused"]
    ran = log.read_text().splitlines()
    assert sorted(Path(s).name for s in ran) == ["a.toml", "b.toml"]
    assert [e.state for e in q.entries()] == ["done", "done"]


def test_retry_puts_a_finished_entry_back(tmp_path, home):
    q = StudyQueue()
    e = q.add(_study(tmp_path, "s"))
    q.mark_running(e.id)
    q.mark_finished(e.id, "incomplete", "1 failed", 1)
    result = CliRunner().invoke(main, ["queue", "retry", str(e.id)])
    assert result.exit_code == 0
    assert q.get(e.id).state == "queued"
    assert q.next_unfinished().id == e.id


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, waiting to be reaped by its (dead) parent's successor
            return True
        time.sleep(0.05)
    return False


def _queued_long_study(tmp_path, home):
    """A queued study long enough (8 cells of 30 steps, one at a time) to be stopped in the middle; the
    queue, its entry, the run folder and the environment to run `queue run` in."""
    study = tmp_path / "long.toml"
    study.write_text(_VALID_STUDY.format(name="long").replace("steps = 2", "steps = 30")
                     .replace('["neutral", "smiling"]', '["neutral", "smiling", "angry", "sad"]')
                     .replace("seed = 1", "seed = 1\nbatch_size = 1"))
    q = StudyQueue()
    out = tmp_path / "out"
    entry = q.add(study, out_dir=out)
    env = {**os.environ, "EXPRESSIONGRID_HOME": str(home), "OMP_NUM_THREADS": "1", "EXPRESSIONGRID_NO_PROGRESS": "1"}
    return q, entry, out, env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the study's process")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_queue_runner_stops_its_study_too(tmp_path, home, how):
    # A study long enough (about 100 model calls) to be stopped in the middle of its generation, when it
    # prints nothing (an orphan would only notice its dead parent at its next line of output).
    q, entry, out, env = _queued_long_study(tmp_path, home)
    runner = subprocess.Popen([sys.executable, "-m", "expressiongrid", "queue", "run"], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while _done_cells(out) < 1:
            assert runner.poll() is None and time.monotonic() < deadline, "the study never started making cells"
            time.sleep(0.02)
        (child,) = _children(runner.pid)
        runner.send_signal(how)
        runner.wait(timeout=60)
        # An orphaned study would keep writing while the next `queue run` starts it again.
        assert _gone(child, timeout=3), "the study kept running after its queue runner was stopped"
        stopped_at = _done_cells(out)
        time.sleep(1)
        assert _done_cells(out) == stopped_at < 8
    finally:
        os.killpg(runner.pid, signal.SIGKILL) if runner.poll() is None else None
    assert q.get(entry.id).state == "running"  # interrupted: the next `queue run` resumes it
    assert not q.runner_active()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the study's process")
def test_a_queue_started_in_the_background_by_a_script_stops_its_study_gently(tmp_path, home):
    # `expressiongrid queue run > queue.out 2>&1 &` in a script or a crontab line starts it with SIGINT
    # ignored (what a shell does to background jobs), and its study inherits that. `kill` must still
    # stop the study the Ctrl-C way: its cells committed and the run recorded as interrupted in run.log.
    q, entry, out, env = _queued_long_study(tmp_path, home)
    output = (tmp_path / "queue.out").open("w")
    runner = subprocess.Popen([sys.executable, "-m", "expressiongrid", "queue", "run"], start_new_session=True,
                              stdout=output, stderr=subprocess.STDOUT, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while _done_cells(out) < 1:
            assert runner.poll() is None and time.monotonic() < deadline, "the study never started making cells"
            time.sleep(0.02)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=90) == 130
    finally:
        os.killpg(runner.pid, signal.SIGKILL) if runner.poll() is None else None
    log = (out / "run.log").read_text(encoding="utf-8")
    assert "run interrupted; finished cells are kept" in log  # not killed hard after a grace period
    assert q.get(entry.id).state == "running"
    output.close()  # what the study said as it stopped reaches the queue's output too
    said = (tmp_path / "queue.out").read_text(encoding="utf-8").splitlines()
    assert "   interrupted: finished cells are kept; run the same command again to resume" in said  # the study's own


def _done_cells(out: Path) -> int:
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{out / 'run.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_list_json_shows_the_notify_url_without_its_secrets(tmp_path, home):
    runner = CliRunner()
    url = "https://user:hunter2@ntfy.example/topic?auth=tok123#frag"
    assert runner.invoke(main, ["queue", "add", str(_study(tmp_path, "s")), "--notify", url]).exit_code == 0
    assert StudyQueue().entries()[0].args == ["--notify", url]  # kept whole: the runner must post to it
    listed = runner.invoke(main, ["queue", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "hunter2" not in listed.output and "tok123" not in listed.output
    assert "ntfy.example/topic" in json.loads(listed.output)[0]["args"][1]


def test_add_queues_nothing_when_one_study_is_bad_or_two_share_a_folder(tmp_path, home):
    runner = CliRunner()
    good = _study(tmp_path, "good")
    bad = tmp_path / "bad.toml"
    bad.write_text('[sampling]\nsteps = "x"\n')
    result = runner.invoke(main, ["queue", "add", str(good), str(bad), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "sampling.steps" in result.output
    assert StudyQueue().entries() == []  # not the good one either: the user fixes and adds both again
    # a/night.toml and b/night.toml would both run into runs/night, mixing two studies in one run folder
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    same = [_study(tmp_path / d, "night") for d in ("a", "b")]
    result = runner.invoke(main, ["queue", "add", *map(str, same), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "would both run into" in result.output
    assert StudyQueue().entries() == []
