"""SQLite plumbing shared by every database of the package: the run folder's and the queue's.

``connect`` opens a database the same way everywhere (WAL, a busy timeout so several processes can share
it, rows by name, transactions opened explicitly); ``transaction`` is the one BEGIN IMMEDIATE ... COMMIT
block (IMMEDIATE takes the write lock first, so a read-then-write cannot interleave with another
process); ``migrate`` applies a component's numbered migrations, each in its own transaction, tracking
versions in ``schema_versions``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from expressiongrid.errors import StoreError

Migration = Callable[[sqlite3.Connection], None]


def connect(path: Path, *, what: str = "database", hint: str = "move it away",
            check: Callable[[sqlite3.Connection, Path], None] | None = None) -> sqlite3.Connection:
    """Open (creating it if needed) the SQLite database at `path`; ``StoreError`` naming `what` and `hint`
    if it is not one. `check(conn, path)` runs before anything is written (to refuse a foreign database)."""
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            if check is not None:
                check(conn, path)
            _set_wal(conn)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {what} {path}: {exc}; {hint}") from exc
    return conn


def read_only_copy(path: Path, *, what: str = "database", hint: str = "move it away") -> sqlite3.Connection:
    """An in-memory copy of the database at `path`, read without writing to the file or beside it; changes
    to the copy (migrations brought up to date for a look at an older file) stay in memory.

    SQLite's ``mode=ro`` still creates the ``-wal`` and ``-shm`` files of a WAL database beside it when they
    are not there, and a read-only connection cannot remove them: so without a ``-wal`` file (no writer
    since the last clean close: the file alone holds everything) it is read as ``immutable``, which makes
    nothing; with one, ``mode=ro`` reads the writer's log through the files already there."""
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "immutable=1"
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    copy.row_factory = sqlite3.Row
    try:
        source = sqlite3.connect(f"{Path(path).resolve().as_uri()}?{mode}", uri=True, timeout=30.0)
        try:
            source.backup(copy)
        finally:
            source.close()
    except sqlite3.DatabaseError as exc:
        copy.close()
        raise StoreError(f"cannot open {what} {path}: {exc}; {hint}") from exc
    return copy


def _set_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Switch to WAL. The switch needs the database alone for a moment and SQLite answers "database is
    locked" at once, without its busy timeout, while another process (an accelerate shard opening the same
    new run folder) does the same: retry for as long as the busy timeout would have waited."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``with transaction(conn):`` — BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception.

    A database error inside or while committing (a full disk, say) becomes a one-line ``StoreError``; any
    other exception passes through unchanged.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.DatabaseError):
            raise database_error(exc) from exc
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:  # e.g. the disk filled up while committing
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise database_error(exc) from exc


def database_error(exc: sqlite3.DatabaseError) -> StoreError:
    """A one-line StoreError for an SQLite failure; a full disk says so, and that the run resumes."""
    if "full" in str(exc):
        return StoreError("the disk is full (writing run.sqlite): free some space and run the same command "
                          "again to resume; finished cells are kept")
    return StoreError(f"run database error: {exc}")


def _ensure_versions_table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")


def schema_version(conn: sqlite3.Connection, component: str) -> int:
    _ensure_versions_table(conn)
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[Migration], *, where: str,
            start: int = 0) -> None:
    """Apply the migrations of `component` not yet applied, each in its own transaction.

    ``migrations`` is the component's full ordered list (append only: version N means the first N ran).
    A migration gets a connection inside the transaction: it uses ``conn.execute`` (``executescript``
    would commit half-way). `start` is the version to assume for a database that has no row for the
    component yet (one whose version was tracked another way before). A database written by a newer
    version (more migrations than this one knows) is refused.
    """
    _ensure_versions_table(conn)
    while True:
        with transaction(conn):
            row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
            version = int(row[0]) if row else start
            if version > len(migrations):
                raise StoreError(
                    f"{where} was written by a newer expressiongrid ({component!r} schema version {version}; "
                    f"this version knows {len(migrations)}): upgrade expressiongrid, or use another output folder"
                )
            if version >= len(migrations):
                if row is None and version:
                    conn.execute("INSERT INTO schema_versions(component, version) VALUES (?, ?)", (component, version))
                return
            try:
                migrations[version](conn)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"migration {version + 1} of {component!r} failed on {where}: {exc}") from exc
            conn.execute(
                "INSERT INTO schema_versions(component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                (component, version + 1),
            )
