"""Warnings about prompt text that A1111 reads in a way the user probably did not intend.

A1111 silently falls back in several places (a prompt that fails to parse is used literally, an
unclosed bracket weights everything after it, ...). We keep A1111's result so images match, but
report what happened as data; the CLI decides how to show it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptWarning:
    """One construct that was ignored or read differently than it looks.

    ``kind`` is a short stable identifier (for tests and JSON output), ``message`` says what happened
    and what to do, ``position`` is the 0-based character offset in the text the warning is about
    (``None`` when it concerns the whole prompt).
    """

    kind: str
    message: str
    position: int | None = None

    def __str__(self) -> str:
        where = f" (at position {self.position})" if self.position is not None else ""
        return f"{self.kind}: {self.message}{where}"
