"""Small text helpers shared by every layer: A1111's comma-separated value lists, ids from user text."""

from __future__ import annotations

import csv
import io
import itertools
import re


def csv_quote(value: str) -> str:
    """One value of an A1111 comma-separated list, quoted (CSV style) only when it needs it."""
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_join(values) -> str:
    """Values joined the way A1111 writes an X/Y/Z axis: ``a,"b, c",d``."""
    return ",".join(csv_quote(str(v)) for v in values)


def csv_split(text: str) -> list[str]:
    """A1111's split of a value list: CSV quotes group, newlines also separate, every item stripped,
    empty items kept (``a, "b, c"`` -> ``["a", "b, c"]``)."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [item.strip() for item in itertools.chain.from_iterable(rows)]


def slug(text: str, fallback: str, max_length: int | None = None) -> str:
    """An id from user text: lower-case letters and digits, every other run of characters one ``-``;
    at most `max_length` characters; `fallback` when nothing is left. Ids made this way name cells'
    rows and columns, so the rule must not change."""
    value = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    if max_length is not None:
        value = value[:max_length]
    return value or fallback
