"""The run folder's SQLite store: one database per output folder, shared by every later stage.

``store.db`` is the SQLite plumbing every database uses (connection, transaction, migration runner),
``store.schema`` every table as explicit migrations, ``store.runs`` the run store (runs and cells).
"""

from __future__ import annotations

from expressiongrid.store.runs import (
    CELL_STATUSES,
    CELLS_DIR,
    DB_NAME,
    GRIDS_DIR,
    CellRecord,
    RunRecord,
    Store,
    cell_file_for,
    find_runs,
    is_complete_png,
    to_jsonable,
)

__all__ = [
    "CELL_STATUSES", "CELLS_DIR", "DB_NAME", "GRIDS_DIR", "CellRecord", "RunRecord", "Store", "cell_file_for",
    "find_runs", "is_complete_png", "to_jsonable",
]
