"""Studies: what to make. Study files, axes, expression sets, seeds, the plan of cells, X/Y/Z plots.

Public names are imported lazily so ``import expressiongrid.study`` stays cheap (no torch) and a
missing sibling module does not break the others.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "parse_axis": "expressiongrid.study.axes",
    "load_study": "expressiongrid.study.study",
    "study_from_dict": "expressiongrid.study.study",
    "Study": "expressiongrid.study.study",
    "plan": "expressiongrid.study.plan",
    "Plan": "expressiongrid.study.plan",
    "PlannedCell": "expressiongrid.study.plan",
    "cell_key": "expressiongrid.study.plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'expressiongrid.study' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
