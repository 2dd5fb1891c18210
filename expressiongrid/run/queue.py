"""The persistent study queue: studies added in the evening, worked through overnight.

The queue is a small SQLite database in the user's data folder (``$EXPRESSIONGRID_HOME`` when set), so it
survives reboots and crashes. Each entry records its state and, once finished, its outcome:

``queued`` → ``running`` → ``done`` | ``incomplete`` (some cells failed; the rest are kept) | ``failed``

An entry left in ``running`` by a runner that died (SIGKILL, power cut) is *interrupted*: the next
``queue run`` resumes it first, and the run store's content-hash keys mean finished cells are not redone.

Each study runs in a child process (``python -m expressiongrid run ...``): a crash, a hung CUDA context or a
leak in one study then cannot take the queue down with it, and each study starts with an empty GPU.
A lock file makes ``queue run`` single-runner: a second one started at the same moment refuses to start
instead of running the same study twice on the same GPU.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.errors import QueueError, StoreError, UsageError
from expressiongrid.paths import unwritable
from expressiongrid.run.signals import sigterm_as_interrupt
from expressiongrid.store.db import connect, migrate, transaction
from expressiongrid.store.schema import QUEUE_MIGRATIONS

STATES = ("queued", "running", "done", "failed", "incomplete")
FINISHED_STATES = ("done", "failed", "incomplete")

# Exit code of `expressiongrid run` when the run finished but some cells failed (see cli/run.py).
EXIT_INCOMPLETE = 1


def data_dir() -> Path:
    """The folder that holds the queue: ``$EXPRESSIONGRID_HOME``, else the platform's user data folder."""
    home = os.environ.get("EXPRESSIONGRID_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "expressiongrid"


@dataclass
class QueueEntry:
    """One study in the queue. Times are Unix seconds (None until they happen)."""

    id: int
    study: str
    out_dir: str | None
    args: list[str]
    state: str
    outcome: str | None
    added_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    exit_code: int | None
    pid: int | None
    host: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass
class QueueRunResult:
    """What happened to one entry during `run_queue`."""

    entry: QueueEntry
    state: str
    outcome: str
    exit_code: int | None
    log_tail: list[str] = field(default_factory=list)


_ARG_SEP = "\x1f"  # unit separator: cannot appear in a command-line argument typed by a user


class StudyQueue:
    """The queue database. Cheap to create; every method opens its own short transaction."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home) if home is not None else data_dir()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(
                f"cannot create the queue folder {self.home}: {exc.strerror}; "
                "set EXPRESSIONGRID_HOME to a writable folder"
            ) from exc
        why = unwritable(self.home)
        if why:  # not "unreadable, move it away": the queue in it is fine, only this folder cannot take writes
            raise QueueError(f"the queue folder {self.home} cannot be written (it {why}); make it writable, or "
                             "set EXPRESSIONGRID_HOME to a writable folder")
        self.path = self.home / "queue.sqlite"
        self.lock_path = self.home / "queue.lock"
        self._migrate()

    # -- database plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            return connect(self.path, what="queue database")
        except StoreError as exc:
            raise QueueError(f"the queue database {self.path} is unreadable ({exc.__cause__}); "
                             "move it away to start afresh") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            with transaction(conn):
                yield conn
        finally:
            conn.close()

    def _migrate(self) -> None:
        conn = self._connect()
        try:
            # Queues made before schema_versions counted their migrations in PRAGMA user_version.
            legacy = conn.execute("PRAGMA user_version").fetchone()[0]
            for component, migrations in QUEUE_MIGRATIONS.items():
                migrate(conn, component, migrations, where=str(self.path), start=legacy)
        finally:
            conn.close()

    @staticmethod
    def _entry(row: sqlite3.Row) -> QueueEntry:
        return QueueEntry(
            id=row["id"], study=row["study"], out_dir=row["out_dir"],
            args=[a for a in row["args"].split(_ARG_SEP) if a] if row["args"] else [],
            state=row["state"], outcome=row["outcome"], added_at=row["added_at"],
            started_at=row["started_at"], finished_at=row["finished_at"], attempts=row["attempts"],
            exit_code=row["exit_code"], pid=row["pid"], host=row["host"],
        )

    # -- public API --------------------------------------------------------------------------------
    def add(self, study: str | os.PathLike, out_dir: str | os.PathLike | None = None,
            args: Sequence[str] = ()) -> QueueEntry:
        """Append a study (stored as an absolute path) with its output folder and extra `run` arguments."""
        study_path = Path(study).expanduser().resolve()
        if not study_path.is_file():
            raise UsageError(f"study file not found: {study}; give the path of a study .toml file")
        out = str(Path(out_dir).expanduser().resolve()) if out_dir is not None else None
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO entries (study, out_dir, args, added_at) VALUES (?, ?, ?, ?)",
                (str(study_path), out, _ARG_SEP.join(args), time.time()),
            )
            row = conn.execute("SELECT * FROM entries WHERE id = ?", (cur.lastrowid,)).fetchone()
        return self._entry(row)

    def entries(self, state: str | None = None) -> list[QueueEntry]:
        """All entries in queue order (oldest first), optionally only those in `state`."""
        conn = self._connect()
        try:
            if state is None:
                rows = conn.execute("SELECT * FROM entries ORDER BY id").fetchall()
            else:
                rows = conn.execute("SELECT * FROM entries WHERE state = ? ORDER BY id", (state,)).fetchall()
        finally:
            conn.close()
        return [self._entry(r) for r in rows]

    def get(self, entry_id: int) -> QueueEntry:
        """The entry with this id; `UsageError` naming the known ids if there is none."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        finally:
            conn.close()
        if row is None:
            raise UsageError(f"no queue entry {entry_id}; `expressiongrid queue list` shows the ids")
        return self._entry(row)

    def remove(self, entry_id: int) -> QueueEntry:
        """Delete an entry. An entry that a live `queue run` is working on cannot be removed."""
        entry = self.get(entry_id)
        if entry.state == "running" and self.runner_active():
            raise QueueError(
                f"queue entry {entry_id} ({entry.study}) is being run right now; stop `expressiongrid queue run` "
                "first (Ctrl-C keeps finished cells), then remove it"
            )
        with self._transaction() as conn:
            conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        return entry

    def next_unfinished(self) -> QueueEntry | None:
        """The entry `queue run` takes next: an interrupted (``running``) one first, else the oldest queued."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT * FROM entries WHERE state IN ('running', 'queued') "
                "ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, id LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
        return self._entry(row) if row else None

    def mark_running(self, entry_id: int, pid: int | None = None) -> QueueEntry:
        """Record that the entry has started (or restarted); counts an attempt."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE entries SET state='running', started_at=?, finished_at=NULL, outcome=NULL, exit_code=NULL, "
                "attempts=attempts+1, pid=?, host=? WHERE id=?",
                (time.time(), pid if pid is not None else os.getpid(), socket.gethostname(), entry_id),
            )
        return self.get(entry_id)

    def mark_finished(self, entry_id: int, state: str, outcome: str, exit_code: int | None) -> QueueEntry:
        """Record the final state (`done`, `incomplete` or `failed`) and a one-line outcome."""
        if state not in FINISHED_STATES:
            raise ValueError(f"not a finished state: {state!r}")
        with self._transaction() as conn:
            conn.execute(
                "UPDATE entries SET state=?, outcome=?, exit_code=?, finished_at=? WHERE id=?",
                (state, outcome, exit_code, time.time(), entry_id),
            )
        return self.get(entry_id)

    def requeue(self, entry_id: int) -> QueueEntry:
        """Put a finished entry back in the queue (e.g. after fixing a broken character file)."""
        self.get(entry_id)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE entries SET state='queued', outcome=NULL, exit_code=NULL, finished_at=NULL WHERE id=?",
                (entry_id,),
            )
        return self.get(entry_id)

    # -- the single-runner lock --------------------------------------------------------------------
    def runner_active(self) -> bool:
        """True while some `queue run` (in any process) holds the queue lock."""
        from filelock import FileLock, Timeout

        probe = FileLock(str(self.lock_path), timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return True
        probe.release()
        return False

    @contextmanager
    def runner_lock(self) -> Iterator[None]:
        """Hold the queue lock; `QueueError` at once if another `queue run` holds it.

        An OS file lock (not a pid file) so that a runner killed with SIGKILL releases it automatically.
        """
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise QueueError(
                "another `expressiongrid queue run` is already working through this queue "
                f"({self.home}); let it finish, or stop it first"
            ) from None
        try:
            yield
        finally:
            lock.release()


# -- running entries ---------------------------------------------------------------------------------

def run_command(entry: QueueEntry) -> list[str]:
    """The command line that runs one entry: the same `run` a user would type, in a fresh interpreter."""
    cmd = [sys.executable, "-m", "expressiongrid", "run", entry.study]
    if entry.out_dir:
        cmd += ["--out", entry.out_dir]
    return cmd + list(entry.args)


def classify(exit_code: int, tail: Sequence[str], out_dir: str | None = None) -> tuple[str, str]:
    """Turn a finished `run` child into (state, one-line outcome).

    The run store in `out_dir` says best what happened (cells done, failed and why); the exit code and the
    child's last output lines decide when there is no store (the study never started).
    """
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    if exit_code < 0:
        return "failed", f"killed by signal {-exit_code}" + (f"; last output: {last}" if last else "")
    report = _store_report(out_dir) if exit_code in (0, EXIT_INCOMPLETE) else None
    if report is not None and report.get("cells_total"):
        counts = f"{report['cells_done']} of {report['cells_total']} cells done"
        if exit_code == 0:
            return "done", counts
        if report.get("cells_failed") and not report.get("cells_pending"):
            why = "; ".join(f"column {f['column']}: {f['error']}" for f in report["failures"][:3])
            return "incomplete", f"{counts}, {report['cells_failed']} failed ({why})"
    if exit_code == 0:
        return "done", last or "finished"
    incomplete = [line.strip() for line in tail if "incomplete" in line.lower()]
    if exit_code == EXIT_INCOMPLETE and incomplete:
        return "incomplete", incomplete[-1]
    return "failed", last or f"exit code {exit_code}"


def _store_report(out_dir: str | None) -> dict | None:
    if not out_dir:
        return None
    from expressiongrid.errors import ExpressionGridError
    from expressiongrid.run.launch import study_report

    try:
        return study_report(out_dir, name=Path(out_dir).name)
    except ExpressionGridError:
        return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the study child gets SIGTERM if the queue runner dies, even by SIGKILL.

    Otherwise an orphaned study would go on writing while the next `queue run` (the lock is free again)
    starts the same study into the same folder.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute_entry(entry: QueueEntry, echo: Callable[[str], None] | None = None,
                  env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run one entry as a child process, passing its output through `echo`; returns (exit code, last lines).

    If the queue runner is stopped (Ctrl-C, SIGTERM), the child is stopped too, gently first (so it
    records the run as interrupted), and the entry stays "running" for the next `queue run` to resume.
    """
    tail: list[str] = []
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(
        run_command(entry), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        encoding="utf-8", errors="replace", env=child_env,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    assert proc.stdout is not None

    def relay(line: str) -> None:
        if echo is not None:
            echo(line.rstrip("\n"))
        tail.append(line.rstrip("\n"))
        del tail[:-40]

    try:
        for line in proc.stdout:
            relay(line)
        return proc.wait(), tail
    except BaseException:
        _stop(proc, relay)
        raise


def _stop(proc: subprocess.Popen, relay: Callable[[str], None], grace: float = 30.0) -> None:
    """Stop the study child the way Ctrl-C would, then hard after `grace` seconds; what it says while it
    stops (how far it got, how to resume) still goes through `relay`.

    SIGTERM, not SIGINT, on POSIX: a `queue run` started in the background by a script or cron
    (`... &`) has SIGINT ignored, its child inherits that, and a SIGINT would only be noticed by the
    SIGKILL `grace` seconds later, with the run never recorded as interrupted. `run` treats SIGTERM
    as Ctrl-C (run/signals.py)."""
    import threading

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if os.name == "posix" else signal.SIGINT)
    hard = threading.Timer(grace, proc.kill)  # reading to the end below waits for the child to exit
    hard.daemon = True
    hard.start()
    try:
        for line in proc.stdout:
            relay(line)
    finally:
        hard.cancel()
        proc.wait()


def run_queue(queue: StudyQueue, *, execute: Callable[[QueueEntry], tuple[int, list[str]]] = execute_entry,
              on_start: Callable[[QueueEntry], None] | None = None,
              on_finish: Callable[[QueueRunResult], None] | None = None,
              max_entries: int | None = None) -> list[QueueRunResult]:
    """Work through the queue until nothing unfinished is left (or `max_entries` were run).

    Takes the single-runner lock for the whole time. Interrupted entries are resumed before queued ones.
    A study that fails does not stop the queue: its state says why and the next study starts.
    """
    results: list[QueueRunResult] = []
    with queue.runner_lock(), sigterm_as_interrupt():
        while max_entries is None or len(results) < max_entries:
            entry = queue.next_unfinished()
            if entry is None:
                break
            entry = queue.mark_running(entry.id)
            if on_start is not None:
                on_start(entry)
            exit_code, tail = execute(entry)
            state, outcome = classify(exit_code, tail, entry.out_dir)
            entry = queue.mark_finished(entry.id, state, outcome, exit_code)
            result = QueueRunResult(entry=entry, state=state, outcome=outcome, exit_code=exit_code, log_tail=tail)
            results.append(result)
            if on_finish is not None:
                on_finish(result)
    return results
