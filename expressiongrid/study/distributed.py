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

import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from expressiongrid.study.store import register_migrations

if TYPE_CHECKING:
    from expressiongrid.study.store import Store

T = TypeVar("T")


def _m001_shards(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE shard_finishes (
            launch_id TEXT NOT NULL,
            process_index INTEGER NOT NULL,
            process_count INTEGER NOT NULL,
            finished_at REAL NOT NULL,
            cells_done INTEGER,
            cells_failed INTEGER,
            PRIMARY KEY (launch_id, process_index)
        )"""
    )


register_migrations("distributed", [_m001_shards])


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
    store.apply_migrations()  # the store may have been opened before this module registered its table
    conn = store.connection
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT OR REPLACE INTO shard_finishes(launch_id, process_index, process_count, finished_at, "
            "cells_done, cells_failed) VALUES (?, ?, ?, ?, ?, ?)",
            (process.launch_id, process.index, process.count, time.time(), cells_done, cells_failed),
        )
        finished = conn.execute(
            "SELECT COUNT(*) FROM shard_finishes WHERE launch_id = ?", (process.launch_id,)
        ).fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return finished >= process.count
