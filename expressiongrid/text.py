"""Small text helpers shared by every layer: A1111's comma-separated value lists."""

from __future__ import annotations

import csv
import io


def csv_quote(value: str) -> str:
    """One value of an A1111 comma-separated list, quoted (CSV style) only when it needs it."""
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_join(values) -> str:
    """Values joined the way A1111 writes an X/Y/Z axis: ``a,"b, c",d``."""
    return ",".join(csv_quote(str(v)) for v in values)
