"""Finished cells written on a worker thread, so the GPU denoises the next batch meanwhile.

Writing a cell is PNG encoding (zlib), the A1111 metadata chunk, an fsync'ed atomic rename and a SQLite
commit: tens of milliseconds per 512 px image, a second or more per batch, all of it time the GPU would
otherwise sit idle. One thread does it, in the order cells were handed over, with its own connection to
the run store (WAL mode lets the runner's thread record failures at the same time).

Nothing counts as done before it is on disk: a cell is marked done in the store only after its file is
complete and renamed into place, and the runner reports a cell done (progress, ``RunSummary.made``) only
when `finished()` hands back its record. A crash or SIGKILL loses at most the images still queued, which
were never reported done, and the next run makes them again.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

_STOP = object()


@dataclass
class Written:
    """One cell's outcome: ``error`` is None when its file is complete and the store marks it done."""

    key: str
    tag: object  # whatever the caller passed with the cell (the runner's PlannedCell)
    error: str | None
    exc: BaseException | None = None  # the exception behind `error` (a full disk stops the run)


class CellWriter:
    """Write cells' PNGs and mark them done in ``<run_dir>/run.sqlite`` on one worker thread, in order.

    Use as a context manager (leaving waits for every queued cell), or call `close()`. `max_queued`
    bounds the images waiting in memory: `submit` blocks when that many are queued.
    """

    def __init__(self, run_dir: str | Path, run_id: int, *, max_queued: int = 64):
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self._jobs: queue.Queue = queue.Queue(maxsize=max_queued)
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="expressiongrid-cell-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, key: str, image, parameters: str, seconds: float, tag: object = None,
               metadata: dict | None = None) -> None:
        """Queue one finished cell: a PIL image, its ``parameters`` infotext and the store's metadata."""
        if self._closed:
            raise RuntimeError("CellWriter is closed")
        self._jobs.put((key, image, parameters, seconds, tag, metadata))

    def finished(self) -> list[Written]:
        """The cells written (or failed to write) since the last call; never waits."""
        out = []
        while True:
            try:
                out.append(self._finished.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> list[Written]:
        """Wait until every queued cell is written; return the outcomes not yet handed back."""
        if not self._closed:
            self._closed = True
            self._jobs.put(_STOP)
            self._thread.join()
        return self.finished()

    def __enter__(self) -> CellWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _work(self) -> None:
        from expressiongrid.output.images import save_png
        from expressiongrid.store import Store, cell_file_for

        store = None
        try:
            store = Store(self.run_dir, create=False)
        except Exception as exc:  # noqa: BLE001 - reported per cell below, never lost on this thread
            opening = f"could not open the run store: {type(exc).__name__}: {exc}"
        else:
            opening = None
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                key, image, parameters, seconds, tag, metadata = job
                if opening is not None:
                    self._finished.put(Written(key, tag, opening))
                    continue
                try:
                    rel = cell_file_for(key)
                    save_png(self.run_dir / rel, image, parameters)
                    store.mark_done(key, file=rel, parameters=parameters, seconds=seconds, run_id=self.run_id,
                                    metadata=metadata)
                except Exception as exc:  # noqa: BLE001 - this cell fails; the rest are still written
                    self._finished.put(Written(key, tag, f"could not save the image: {type(exc).__name__}: {exc}",
                                               exc))
                else:
                    self._finished.put(Written(key, tag, None))
        finally:
            if store is not None:
                store.close()
