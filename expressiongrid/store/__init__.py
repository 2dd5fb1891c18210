"""The run folder's SQLite store: one database per output folder, shared by every later stage.

Run store (runs and cells) lives in ``store.runs``; import the public names from here.
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
    register_migrations,
    to_jsonable,
)

__all__ = [
    "CELL_STATUSES", "CELLS_DIR", "DB_NAME", "GRIDS_DIR", "CellRecord", "RunRecord", "Store", "cell_file_for",
    "find_runs", "is_complete_png", "register_migrations", "to_jsonable",
]
