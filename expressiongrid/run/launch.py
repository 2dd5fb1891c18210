"""Several GPUs or machines with Hugging Face accelerate: which columns this process makes, and who composes.

``accelerate launch -m expressiongrid run STUDY`` starts one copy of the run per GPU. Each copy:

1. asks `current_process()` for its index and the process count (from accelerate's ``PartialState``, which
   reads what the launcher set; a plain ``python -m expressiongrid run`` is process 0 of 1);
2. makes only its share of the columns (characters), `columns_for_process`, round-robin so that each
   process gets a mix of cheap and expensive columns, and writes its cells into the shared run store
   (SQLite in WAL mode with a busy timeout, so concurrent writers wait instead of failing);
3. calls `finish_shard` when its columns are done. That records the finish in the store and tells the
   *last* process to finish that it must compose the grids. No process waits at a barrier while others
   work: on an overnight run the shards can end hours apart, longer than any collective-op timeout.

Only the short set-up (the main process reconciles the store and registers the plan, the others wait)
uses a barrier, `wait_for_everyone`. Columns are what is split because a column shares one character
activation (LoRA written into the weights) across all its rows: splitting rows would activate every
character on every GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from expressiongrid.store import DB_NAME, Store
from expressiongrid.store.db import transaction

if TYPE_CHECKING:
    from expressiongrid.study.plan import Plan
    from expressiongrid.run.runner import Progress, RunSummary
    from expressiongrid.study.study import Study

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in a launch: index 0..count-1, its device, and the launch's shared id."""

    index: int = 0
    count: int = 1
    local_index: int = 0
    device: str | None = None
    launch_id: str = ""

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1

    @property
    def label(self) -> str:
        """1-based "i/n" as written in logs and messages."""
        return f"{self.index + 1}/{self.count}"


def launched_distributed(environ: dict[str, str] | None = None) -> bool:
    """True when a launcher (accelerate, torchrun) started several processes for this run."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current_process() -> ProcessInfo:
    """This process's place in the launch. Single-process runs never import accelerate or torch.distributed."""
    if not launched_distributed():
        return ProcessInfo(launch_id=uuid.uuid4().hex)
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # Without a GPU (or with `--cpu`) accelerate needs cpu=True to form a gloo group instead of
    # silently treating each process as a lone single process.
    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=use_cpu)
    # One id for the whole launch, so finish records of an earlier (crashed) launch never count.
    holder = [uuid.uuid4().hex if state.is_main_process else ""]
    broadcast_object_list(holder, from_process=0)
    device = None
    if state.device is not None:
        device = "cpu" if state.device.type == "cpu" else str(state.device)
    return ProcessInfo(index=state.process_index, count=state.num_processes,
                       local_index=state.local_process_index, device=device, launch_id=str(holder[0]))


def wait_for_everyone(process: ProcessInfo) -> None:
    """Barrier across the launch (a no-op for a single process). Use only around short set-up steps."""
    if process.distributed:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # the state initialised by current_process()


def columns_for_process(columns: Sequence[T], index: int, count: int) -> list[T]:
    """The columns process `index` of `count` makes: every `count`-th, starting at `index`.

    Every column goes to exactly one process; with more processes than columns, some get none.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process index {index} is outside 0..{count - 1}")
    return list(columns[index::count])


def finish_shard(store: Store, process: ProcessInfo, cells_done: int = 0, cells_failed: int = 0) -> bool:
    """Record that this process made all its columns; True if it was the last, i.e. it must compose the grids.

    The check and the insert are one IMMEDIATE transaction, so exactly one process of a launch sees
    itself as last even when several finish at the same instant. A single process is always last.
    """
    if not process.distributed:
        return True
    with transaction(store.connection) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO shard_finishes(launch_id, process_index, process_count, finished_at, "
            "cells_done, cells_failed) VALUES (?, ?, ?, ?, ?, ?)",
            (process.launch_id, process.index, process.count, time.time(), cells_done, cells_failed),
        )
        finished = conn.execute(
            "SELECT COUNT(*) FROM shard_finishes WHERE launch_id = ?", (process.launch_id,)
        ).fetchone()[0]
    return finished >= process.count


# -- running one launch's share, with the run log and the notification -----------------------------------


@dataclass
class LaunchOutcome:
    """What `run_launched` did in this process.

    `summary` covers this process's columns; `report` covers the whole study when this process composed
    the grids (always for a single process), else this process's share. `exit_code` is what the process
    should exit with: a process that is not the last to finish exits 0 even if some of its cells failed,
    because torchrun stops every other process of the launch as soon as one exits non-zero; the failures
    are in the store and the last process reports them for the whole study.
    """

    summary: RunSummary
    process: ProcessInfo
    composed: bool
    report: dict
    exit_code: int
    notified: bool | None = None  # the --notify post was answered 2xx; None: nothing was posted


def study_report(out_dir: str | os.PathLike, *, name: str, summary: RunSummary | None = None,
                 started_at: float | None = None, process: ProcessInfo | None = None,
                 status: str | None = None, message: str | None = None, store: Store | None = None) -> dict:
    """A JSON-ready account of the run read from the store: counts, failures by column and why, grids.

    This is what ``--notify`` posts and what the run log ends with. ``store`` is the run's open store
    (opened here when not given).
    """
    import socket


    report: dict = {"event": "run_finished", "study": name, "out_dir": str(Path(out_dir).resolve()),
                    "host": socket.gethostname(), "process_count": process.count if process else 1}
    cells = None
    if store is not None:
        cells = store.cells()
    elif (Path(out_dir) / DB_NAME).is_file():
        with Store.open_existing(out_dir) as own:
            cells = own.cells()
    if cells is not None:
        report["cells_total"] = len(cells)
        for state in ("done", "failed", "pending"):
            report[f"cells_{state}"] = sum(c.status == state for c in cells)
        grouped: dict[tuple[str, str], list[str]] = {}
        for c in cells:
            if c.status == "failed":
                grouped.setdefault((c.col_label, c.error or "unknown error"), []).append(c.row_label)
        report["failures"] = [{"column": col, "rows": rows, "error": err} for (col, err), rows in grouped.items()]
    if summary is not None:
        report["grids"] = [str(g) for g in summary.grids]
        report["seconds"] = round(summary.seconds, 1)
    if started_at is not None:
        report["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at))
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if status is None:
        status = "done" if report.get("cells_failed", 0) == 0 and report.get("cells_pending", 0) == 0 \
            else "incomplete"
    report["status"] = status
    report["exit_code"] = 0 if status == "done" else 1
    if message:
        report["message"] = message
    return report


LOCK_NAME = "run.lock"
OWNER_NAME = "run.lock.json"  # who holds run.lock: {"pid", "host", "started"}; left behind only by a killed run
# Two readings of one process's start time differ by clock-tick rounding; a later process given the same pid
# started at least this much later.
_SAME_START_S = 1.0


def _process_started(pid: int) -> dict[str, float]:
    """When process ``pid`` started, which tells a run's process from a later one the system gave the same
    pid: ``{"at"}`` (seconds since the epoch) and ``{"after_boot"}`` (seconds since the machine started).
    Where the system derives the first from the second (Linux), setting the clock moves "at" but not
    "after_boot"; where it records "at" itself (macOS, Windows), "at" stays. ``psutil.NoSuchProcess`` when
    there is no such process, ``AccessDenied`` when the system will not say."""
    import psutil

    at = psutil.Process(pid).create_time()
    return {"at": at, "after_boot": at - psutil.boot_time()}


def _same_start(recorded: dict, now: dict[str, float]) -> bool:
    """The run's process is the one with its pid now when either reading of its start time agrees."""
    return any(abs(recorded[k] - now[k]) < _SAME_START_S for k in now if k in recorded)


def run_folder_owner(out_dir: str | os.PathLike) -> dict | None:
    """Whether the run that holds (or held) ``out_dir``'s lock is still alive, read without touching the
    lock (a probe of the lock itself could make a run starting at that moment refuse the folder).

    None when no run has the folder (or an older version ran it); else ``{"pid", "host", "alive"}`` with
    ``alive`` True/False on this host and None for a run on another host. A process with the recorded pid
    that started at another time than the run's is another program the pid was reused for: not alive."""
    import socket

    import psutil

    try:
        owner = json.loads((Path(out_dir) / OWNER_NAME).read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
        started = owner.get("started")
        started = {k: float(v) for k, v in started.items()} if started is not None else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if host != socket.gethostname():
        return {"pid": pid, "host": host, "alive": None}
    try:
        now_started = _process_started(pid)
    except psutil.NoSuchProcess:  # includes a zombie: the run has exited
        alive = False
    except psutil.AccessDenied:  # the process exists but the system will not say when it started
        alive = True
    else:  # a file from an older version has no start time: the pid alone is all there is to go by
        alive = started is None or _same_start(started, now_started)
    return {"pid": pid, "host": host, "alive": alive}


@contextlib.contextmanager
def run_folder_lock(out_dir: str | os.PathLike, process: ProcessInfo):
    """Hold ``<out_dir>/run.lock`` while a run writes there, so a second run on the same folder is refused
    instead of remaking the first one's cells. One lock per launch: its main process takes it, the other
    processes of the launch share the folder by design. The operating system drops the lock when the
    process dies, so a killed run never blocks the next one (the file itself stays, empty). Beside it,
    ``run.lock.json`` names the holding process for ``runs show`` (``run_folder_owner``)."""
    if not process.is_main:
        yield
        return
    from filelock import FileLock, Timeout

    from expressiongrid.errors import UsageError

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(out_dir) / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"another run is writing into {out_dir} (it holds {LOCK_NAME}): wait for it to finish, "
                         "or use another --out") from None
    import socket

    owner = Path(out_dir) / OWNER_NAME
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": _process_started(os.getpid())}), encoding="utf-8")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def run_launched(study: Study, out_dir: str | os.PathLike, progress: Progress | None = None, *,
                 plan: Plan | None = None, batch_size: int | None = None, argv: list[str] | None = None,
                 notify_url: str | None = None, process: ProcessInfo | None = None) -> LaunchOutcome:
    """Run this process's share of `study` into `out_dir`, with ``run.log`` and an optional notification.

    A plain run makes every column and composes the grids. Under ``accelerate launch`` the main process
    repairs the store and registers the plan while the others wait; then each makes its columns, and the
    last to finish composes the grids, reports the whole study and sends the notification.
    """
    from expressiongrid.run.notify import notify, redact_argv
    from expressiongrid.run.runlog import open_run_log
    from expressiongrid.output.run_grids import compose_grids
    from expressiongrid.run.resume import resume_plan
    from expressiongrid.run.runner import run_study
    from expressiongrid.run.signals import sigterm_as_interrupt

    process = process or current_process()
    # The --notify URL's token and user:password stay out of run.log and runs.argv.
    argv = redact_argv(list(argv if argv is not None else sys.argv[1:]))
    # Without a plan shown to the user, a resumed study keeps the random seeds its earlier run drew.
    p = plan if plan is not None else resume_plan(out_dir, study)
    started_at = time.time()
    # The run folder is opened once here and passed down: runner, shard bookkeeping, grids and report.
    with sigterm_as_interrupt(), run_folder_lock(out_dir, process), \
            open_run_log(out_dir, process.label if process.distributed else None) as log, Store(out_dir) as store:
        resolved = {**study.info(), "base_seed": p.base_seed, "plan": p.describe()}
        log.header(study=resolved, argv=argv, extra={"output folder": Path(out_dir).resolve()})
        for warning in p.warnings():  # what `run` printed before the run, for whoever reads the log
            log.warning("%s", warning)
        try:
            if not process.distributed:
                summary = run_study(study, out_dir, progress, plan=p, batch_size=batch_size, argv=argv, store=store)
                composed = True
            else:
                columns = columns_for_process(sorted({c.col_index for c in p.cells}), process.index,
                                              process.count)
                log.info("process %s of the launch makes columns %s", process.label, columns)
                common = dict(plan=p, batch_size=batch_size, argv=argv, columns=columns, compose=False, store=store)
                if process.is_main:
                    summary = run_study(study, out_dir, progress, on_ready=lambda: wait_for_everyone(process),
                                        **common)
                else:
                    wait_for_everyone(process)
                    if study.sampling.seed == -1 or study.drawn_axes():
                        # The main process drew this launch's random seeds and registered its plan: the
                        # same seeds here, or this process's columns would be made with seeds of its own.
                        common["plan"] = resume_plan(out_dir, study)
                    summary = run_study(study, out_dir, progress, repair=False, **common)
                composed = finish_shard(store, process, summary.made, summary.failed)
                if composed:
                    log.info("last process to finish: composing the grids")
                    summary.grids, summary.upload_copies = compose_grids(out_dir, store=store)
            repaired = {k: v for k, v in summary.repaired.items() if v}
            if repaired:
                log.warning("repaired before the run (left by an interrupted run): %s", repaired)
            for failure in summary.failures:
                log.failure("cell %s / %s failed: %s", failure.col_label, failure.row_label, failure.error)
            if composed:
                report = study_report(out_dir, name=study.name, summary=summary, started_at=started_at,
                                      process=process, store=store)
                exit_code = report["exit_code"]
            else:
                report = summary.to_dict()
                exit_code = 0
            log.info("run finished: %s", json.dumps(report, ensure_ascii=False, default=str))
            notified = notify(notify_url, report) if notify_url and composed else None
            return LaunchOutcome(summary=summary, process=process, composed=composed, report=report,
                                 exit_code=exit_code, notified=notified)
        except BaseException as exc:
            if notify_url and process.is_main:
                interrupted = isinstance(exc, KeyboardInterrupt)
                status = "interrupted" if interrupted else "failed"
                message = "interrupted" if interrupted else f"{exc.__class__.__name__}: {exc}"
                try:
                    report = study_report(out_dir, name=study.name, started_at=started_at, process=process,
                                          status=status, message=message, store=store)
                except Exception:  # an unreadable store must not hide the error that stopped the run
                    report = {"event": "run_finished", "study": study.name, "status": status, "exit_code": 1,
                              "message": message}
                notify(notify_url, report)
            raise
