"""The run store: one SQLite database (``run.sqlite``) per output folder, one row per grid cell.

A cell's key is a content hash of everything that determines its pixels (see ``plan.cell_key``), so the
same study run again finds every cell already done, and a study with one more row or column only adds
the new cells. A cell counts as done only when its PNG is complete on disk *and* its row says so:
``reconcile()`` checks both on every start and sends anything doubtful back to "pending".

Every table of the folder is created by the numbered migrations of ``store.schema`` (run store, shard
bookkeeping, analysis, judging), applied whenever a store is opened.
The database runs in WAL mode with a busy timeout so several processes (accelerate shards, a judging web
app) can share one run folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expressiongrid.errors import NoRunError, StoreError
from expressiongrid.store.db import connect, migrate, read_only_copy, schema_version, transaction
from expressiongrid.store.schema import RUN_MIGRATIONS

DB_NAME = "run.sqlite"
CELLS_DIR = "cells"
GRIDS_DIR = "grids"
CELL_STATUSES = ("pending", "done", "failed")


# --------------------------------------------------------------------------------------------------


@dataclass
class CellRecord:
    """One grid cell as stored. ``file`` is relative to the run folder; ``spec`` holds every hashed input."""

    key: str
    run_id: int | None
    page: int
    row_index: int
    col_index: int
    row_id: str
    row_label: str
    col_id: str
    col_label: str
    character_id: str | None
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    sampler: str
    cfg_scale: float
    width: int
    height: int
    status: str = "pending"
    error: str | None = None
    file: str | None = None
    parameters: str | None = None  # the A1111 text written into the cell's file
    seconds: float | None = None
    page_label: str = ""
    made_in_run: int | None = None
    finished_at: float | None = None
    spec: dict = field(default_factory=dict)
    metadata: dict | None = None  # ``output.metadata.CellMetadata.to_dict()``; None for older cells

    def to_dict(self) -> dict:
        return asdict(self)


_CELL_COLUMNS = [
    "key", "run_id", "page", "row_index", "col_index", "row_id", "row_label", "col_id", "col_label",
    "character_id", "prompt", "negative_prompt", "seed", "steps", "sampler", "cfg_scale", "width", "height",
    "status", "error", "file", "parameters", "seconds", "page_label", "made_in_run", "finished_at", "spec_json",
    "metadata_json",
]


_RUN_COLUMNS = {"id", "started_at", "finished_at", "status", "study_path", "study_json", "summary_json", "argv"}


def _record_from_row(row: sqlite3.Row) -> CellRecord:
    data = {k: row[k] for k in _CELL_COLUMNS if not k.endswith("_json")}
    data["spec"] = json.loads(row["spec_json"] or "{}")
    data["metadata"] = json.loads(row["metadata_json"]) if row["metadata_json"] else None
    return CellRecord(**data)


@dataclass
class RunRecord:
    """One invocation of the runner on this folder."""

    id: int
    started_at: float
    finished_at: float | None
    status: str
    study_path: str | None
    summary: dict | None


def is_complete_png(path: Path) -> bool:
    """True if ``path`` is a PNG whose last chunk is IEND, i.e. it was written to the end.

    Cheap enough to run on every cell at start (reads 8 + 12 bytes), and catches truncated files that a
    crash or a full disk could leave even though writes go through temp file + rename.
    """
    try:
        size = path.stat().st_size
        if size < 8 + 12:
            return False
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            fh.seek(size - 12)
            return fh.read(12) == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    except OSError:
        return False


def is_intact_png(path: Path) -> bool:
    """True if ``path`` is complete (:func:`is_complete_png`) and every chunk's CRC matches, so bytes damaged
    inside the file (a bad disk, a bad copy) are found before a grid tries to decode them."""
    if not is_complete_png(path):
        return False
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError, struct.error):  # what Pillow raises for a damaged PNG
        return False
    return True


def _refuse_foreign_database(conn: sqlite3.Connection, path: Path) -> None:
    """A database with tables but no ``schema_versions`` was made by something else: never migrate it."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "schema_versions" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise StoreError(f"{path} was not made by expressiongrid (it has tables {shown} but no schema "
                         "versions): move it away or use another output folder")


class Store:
    """The SQLite run store of one output folder (``<run_dir>/run.sqlite``)."""

    def __init__(self, run_dir: str | os.PathLike, *, create: bool = True, read_only: bool = False):
        self.run_dir = Path(run_dir)
        self.db_path = self.run_dir / DB_NAME
        # Components whose tables an older version made (a read-only store brings only its copy up to date).
        self.older_schema: list[str] = []
        if (not create or read_only) and not self.db_path.exists():
            found = "the folder does not exist" if not self.run_dir.exists() else f"{DB_NAME} not found"
            raise NoRunError(f"no run in {self.run_dir}: {found} (name the folder a study was run into with "
                             "--out; `expressiongrid runs list` lists the runs under out/)")
        hint = "move it away or use another output folder"
        if read_only:
            self.connection = read_only_copy(self.db_path, what="run database", hint=hint)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.connection = connect(self.db_path, what="run database", check=_refuse_foreign_database, hint=hint)
        try:
            if read_only:
                _refuse_foreign_database(self.connection, self.db_path)
                self.older_schema = [c for c, m in RUN_MIGRATIONS.items() if self.schema_version(c) < len(m)]
            self.apply_migrations()
            self._check_core_columns()
            if read_only:
                self.connection.execute("PRAGMA query_only = ON")  # what is written to the copy would be lost
        except BaseException:
            self.connection.close()
            raise

    def _check_core_columns(self) -> None:
        """The core tables have every column this version reads (a damaged or hand-made run.sqlite may not)."""
        for table, wanted in (("runs", _RUN_COLUMNS), ("cells", set(_CELL_COLUMNS))):
            have = {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}
            missing = sorted(wanted - have)
            if missing:
                raise StoreError(f"{self.db_path}: table {table} lacks column(s) {', '.join(missing[:5])}; the "
                                 "file is damaged or from another program: move it away or use another output folder")

    @classmethod
    def open_existing(cls, run_dir: str | os.PathLike) -> Store:
        """Open the store of an existing run folder; ``StoreError`` if there is none."""
        return cls(run_dir, create=False)

    @classmethod
    def open_read_only(cls, run_dir: str | os.PathLike) -> Store:
        """A look at an existing run folder's store that writes nothing there (a dry run's): an in-memory
        copy, brought up to date when an older version wrote it (``older_schema`` names what the next real
        opening will upgrade); writing to it raises. Refuses what ``open_existing`` refuses."""
        return cls(run_dir, read_only=True)

    # -- context management -------------------------------------------------------------------------

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- migrations -----------------------------------------------------------------------------------

    def schema_version(self, component: str = "core") -> int:
        return schema_version(self.connection, component)

    def apply_migrations(self) -> None:
        """Create or update every table of the run folder (``store.schema.RUN_MIGRATIONS``)."""
        for component, migrations in RUN_MIGRATIONS.items():
            migrate(self.connection, component, migrations, where=str(self.db_path))

    def _tx(self):
        return transaction(self.connection)

    # -- runs -------------------------------------------------------------------------------------------

    def begin_run(self, study_info: dict, cells: Iterable[CellRecord], *, study_path: str | None = None,
                  argv: list[str] | None = None) -> int:
        """Record a new run of ``study_info`` and register its plan's cells.

        New cells are inserted as pending; cells already known keep their status and file but take the
        new plan's position and labels (adding a row can shift existing rows down).
        """
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO runs(started_at, status, study_path, study_json, argv) VALUES (?, 'running', ?, ?, ?)",
                (now, study_path, json.dumps(study_info, ensure_ascii=False, default=str),
                 json.dumps(argv) if argv is not None else None),
            )
            run_id = int(cur.lastrowid)
            for cell in cells:
                conn.execute(
                    """INSERT INTO cells(key, run_id, page, page_label, row_index, col_index, row_id, row_label,
                           col_id, col_label, character_id, prompt, negative_prompt, seed, steps, sampler,
                           cfg_scale, width, height, status, spec_json, created_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
                       ON CONFLICT(key) DO UPDATE SET run_id = excluded.run_id, page = excluded.page,
                           page_label = excluded.page_label, row_index = excluded.row_index,
                           col_index = excluded.col_index, row_id = excluded.row_id,
                           row_label = excluded.row_label, col_id = excluded.col_id,
                           col_label = excluded.col_label""",
                    (cell.key, run_id, cell.page, cell.page_label, cell.row_index, cell.col_index, cell.row_id,
                     cell.row_label, cell.col_id, cell.col_label, cell.character_id, cell.prompt,
                     cell.negative_prompt, cell.seed, cell.steps, cell.sampler, cell.cfg_scale, cell.width,
                     cell.height, json.dumps(cell.spec, sort_keys=True, ensure_ascii=False, default=str), now),
                )
        return run_id

    def finish_run(self, run_id: int, status: str, summary: dict) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?, summary_json = ? WHERE id = ?",
                (time.time(), status, json.dumps(summary, default=str), run_id),
            )

    def runs(self) -> list[RunRecord]:
        rows = self.connection.execute(
            "SELECT id, started_at, finished_at, status, study_path, summary_json FROM runs ORDER BY id"
        ).fetchall()
        return [RunRecord(r["id"], r["started_at"], r["finished_at"], r["status"], r["study_path"],
                          json.loads(r["summary_json"]) if r["summary_json"] else None) for r in rows]

    def latest_run_id(self) -> int | None:
        row = self.connection.execute("SELECT MAX(id) FROM runs").fetchone()
        return row[0]

    def study_info(self) -> dict:
        """The resolved study of the latest run (rows, columns, prompt template, page axis, ...)."""
        row = self.connection.execute("SELECT study_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise NoRunError(f"no run in {self.run_dir}: {DB_NAME} holds no run yet (run the study with --out "
                             f"{self.run_dir} first)")
        return json.loads(row[0])

    # -- cells ------------------------------------------------------------------------------------------

    def cells(self, status: str | None = None, *, all_runs: bool = False) -> list[CellRecord]:
        """The cells of the latest run's plan (or every cell ever planned here with ``all_runs``).

        Ordered by page, column, row, so a caller walking them sees one character's column at a time.
        """
        if status is not None and status not in CELL_STATUSES:
            raise StoreError(f"unknown cell status {status!r}; expected one of {', '.join(CELL_STATUSES)}")
        where, args = [], []
        if not all_runs:
            latest = self.latest_run_id()
            if latest is None:
                return []
            where.append("run_id = ?")
            args.append(latest)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM cells"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY page, col_index, row_index, key"
        return [_record_from_row(r) for r in self.connection.execute(sql, args).fetchall()]

    def cell(self, key: str) -> CellRecord | None:
        row = self.connection.execute("SELECT * FROM cells WHERE key = ?", (key,)).fetchone()
        return _record_from_row(row) if row else None

    def mark_done(self, key: str, *, file: str, parameters: str, seconds: float, run_id: int | None,
                  metadata: dict | None = None) -> None:
        """Record a finished cell. Call only after its PNG is complete on disk (see ``images.save_png``).

        ``parameters`` is the A1111 text written into the file, ``metadata`` the same as data.
        """
        with self._tx() as conn:
            conn.execute(
                """UPDATE cells SET status = 'done', error = NULL, file = ?, parameters = ?, seconds = ?,
                       made_in_run = ?, finished_at = ?, metadata_json = ? WHERE key = ?""",
                (file, parameters, seconds, run_id, time.time(),
                 json.dumps(metadata, ensure_ascii=False) if metadata is not None else None, key),
            )

    def mark_failed(self, key: str, error: str, *, run_id: int | None, seconds: float | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                """UPDATE cells SET status = 'failed', error = ?, file = NULL, seconds = ?, made_in_run = ?,
                       finished_at = ? WHERE key = ?""",
                (error, seconds, run_id, time.time(), key),
            )

    def mark_pending(self, keys: Iterable[str]) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE cells SET status = 'pending', error = NULL, file = NULL WHERE key = ?",
                [(k,) for k in keys],
            )

    def reconcile(self) -> dict[str, int]:
        """Make the database and the files agree before a run; return what was fixed.

        - a "done" row whose PNG is missing, truncated or damaged inside goes back to pending (it is redone);
        - failed cells go back to pending (a new run retries them);
        - leftover temp files from an interrupted write (cells and grids) are removed; a PNG with no done row is left for
          the run to overwrite (its path is derived from the key), never trusted.
        """
        fixed = {"missing_or_broken_files": 0, "retried_failed": 0, "temp_files_removed": 0}
        to_redo = []
        for cell in self.cells("done", all_runs=True):
            if not cell.file or not is_intact_png(self.run_dir / cell.file):
                to_redo.append(cell.key)
        fixed["missing_or_broken_files"] = len(to_redo)
        failed = [c.key for c in self.cells("failed", all_runs=True)]
        fixed["retried_failed"] = len(failed)
        if to_redo or failed:
            self.mark_pending(to_redo + failed)
        for folder in (self.run_dir / CELLS_DIR, self.run_dir / GRIDS_DIR):
            if folder.is_dir():
                for tmp in folder.rglob("*.tmp*"):
                    try:
                        tmp.unlink()
                        fixed["temp_files_removed"] += 1
                    except OSError:
                        pass
        return fixed

    def counts(self, *, all_runs: bool = False) -> dict[str, int]:
        """Number of cells per status in the latest plan."""
        out = {s: 0 for s in CELL_STATUSES}
        for cell in self.cells(all_runs=all_runs):
            out[cell.status] = out.get(cell.status, 0) + 1
        return out


def find_runs(root: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """Run folders (those holding ``run.sqlite``) at or below ``root``, sorted by path."""
    root = Path(root)
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        if (path / DB_NAME).is_file():
            found.append(path)
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if child.name in (CELLS_DIR, GRIDS_DIR):
                continue
            walk(child, depth + 1)

    walk(root, 0)
    return found


def cell_file_for(key: str) -> str:
    """Where a cell's PNG lives, relative to the run folder (derived from the key, so reruns overwrite)."""
    return f"{CELLS_DIR}/{key[:2]}/{key}.png"


def to_jsonable(value: Any) -> Any:
    """Dataclass-friendly JSON conversion used when storing summaries."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
