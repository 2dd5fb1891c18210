"""File names made from user text (study names, labels): never a path, never empty."""

from __future__ import annotations

import re


def safe_filename(text: str, fallback: str = "untitled", max_length: int = 80) -> str:
    """A file-name stem from `text`: letters, digits, ``.``, ``_`` and ``-`` kept, every other run of
    characters (slashes, colons, angle brackets, spaces, ...) becomes ``_``; no leading dots, so the result
    can never be ``..`` or a hidden file; at most `max_length` characters; `fallback` when nothing is left.

    Example: ``safe_filename("../../my study: v2")`` is ``"my_study_v2"``.
    """
    name = re.sub(r"[^\w.-]+", "_", str(text)).strip("._-")
    name = name[:max_length].rstrip("._-")
    return name or fallback
