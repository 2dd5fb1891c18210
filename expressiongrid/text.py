"""Small text helpers shared by every layer: A1111's comma-separated value lists, ids from user text, and the
invisible characters that change the direction text is shown in."""

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


# Unicode's Bidi_Control characters: the Arabic letter mark, the left-to-right and right-to-left marks, the
# embeddings and overrides (LRE, RLE, PDF, LRO, RLO) and the isolates (LRI, RLI, FSI, PDI). Invisible
# themselves, they reorder the text around them: "smile\u202eyppah" is shown as "smilehappy".
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def bidi_controls_in(text: str) -> list[str]:
    """The direction control characters in `text`, each once, in order of first appearance."""
    return [ch for ch in dict.fromkeys(text) if ch in BIDI_CONTROLS]


_ISOLATE_OPENERS = frozenset("\u2066\u2067\u2068")  # LRI, RLI, FSI; PDI (U+2069) closes them


def isolate(text: str) -> str:
    """`text` as a unit that cannot reorder what is written around it, for text put in a sentence (a question,
    a title, a menu entry): text with direction controls is wrapped in FSI ... PDI, which ends every embedding
    and override it left open. A PDI of its own that closes nothing is left out (it would end the isolate
    early), and one PDI is added for each isolate it left open. Text without controls comes back as it is."""
    if not bidi_controls_in(text):
        return text
    depth, kept = 0, []
    for ch in text:
        if ch == "\u2069":
            if depth == 0:
                continue
            depth -= 1
        elif ch in _ISOLATE_OPENERS:
            depth += 1
        kept.append(ch)
    return "\u2068" + "".join(kept) + "\u2069" * (depth + 1)


def without_bidi_controls(text: str) -> str:
    """`text` with its direction control characters left out, so it is shown in the order it was written
    (right-to-left scripts still run right to left: that comes from their letters, not from these)."""
    return "".join(ch for ch in text if ch not in BIDI_CONTROLS)


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, the cut marked with an ellipsis: for labels in places
    of a fixed width where nothing measures the font (the report's charts); the full text goes beside it
    (a tooltip) so nothing is lost."""
    return text if len(text) <= limit else text[:max(limit - 1, 1)].rstrip() + "\u2026"


def count_noun(n: int, noun: str) -> str:
    """``1 judge``, ``2 judges``: counts as people read them (nouns whose plural adds an s)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
