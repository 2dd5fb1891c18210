"""Emphasis: ``(word)``, ``[word]``, ``(word:1.3)``, escapes and ``BREAK``, read the way A1111 reads them.

The result is a list of ``(text, weight)`` fragments. ``BREAK`` outside brackets becomes the marker
``("BREAK", -1.0)`` (a forced chunk break); weights are multiplied in A1111's order so the floats are
bit-identical (``((a:1.3))`` is ``1.3 * 1.1 * 1.1``).
"""

from __future__ import annotations

import math
import re

from expressiongrid.errors import PromptSyntaxError
from expressiongrid.limits import MAX_NESTING
from expressiongrid.prompts.pairs import Fragment
from expressiongrid.prompts.warnings import PromptWarning

ROUND_WEIGHT = 1.1
SQUARE_WEIGHT = 1 / 1.1
BREAK_MARKER = ("BREAK", -1.0)

# Alternatives in the order A1111 tries them: escapes, a lone backslash, openers, a weight-close
# ":<number>)", plain closers, a text run, a lone colon.
_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
  | (?P<backslash>\\)
  | (?P<open>[(\[])
  | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+)
  | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\bBREAK\b")


def _split_breaks(text: str) -> list[str]:
    """``text`` split at each word ``BREAK``, the whitespace around it dropped (A1111's ``\\s*\\bBREAK\\b\\s*``).

    Stripping after a plain split gives the same pieces in linear time; the regex with leading ``\\s*``
    backtracks over every run of whitespace and took seconds for a prompt of 10,000 spaces.
    """
    parts = _BREAK.split(text)
    for i in range(len(parts)):
        if i > 0:
            parts[i] = parts[i].lstrip()
        if i < len(parts) - 1:
            parts[i] = parts[i].rstrip()
    return parts


def _parse(text: str, warnings: list[PromptWarning] | None) -> list[list]:
    res: list[list] = []  # [text, weight] pairs, mutated in place while brackets close
    round_open: list[tuple[int, int]] = []  # (index into res, character offset)
    square_open: list[tuple[int, int]] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _TOKEN.finditer(text):
        kind = m.lastgroup if m.lastgroup != "number" else "weight"
        tok = m.group(0)
        pos = m.start()
        if kind in ("escape", "backslash"):
            res.append([tok[1:], 1.0])
        elif kind == "open":
            if len(round_open) + len(square_open) >= MAX_NESTING:
                # Every open bracket multiplies all that follows: beyond this, parsing goes quadratic.
                raise PromptSyntaxError(
                    f"more than {MAX_NESTING} brackets are open at once: close them or escape them as \\( \\[",
                    position=pos, text=text,
                )
            (round_open if tok == "(" else square_open).append((len(res), pos))
        elif kind == "weight" and round_open:
            number = m.group("number")
            try:
                weight = float(number)
            except ValueError:
                raise PromptSyntaxError(
                    f"'{number}' in '{tok}' is not a number: write an emphasis weight like (word:1.2)",
                    position=m.start("number"),
                    text=text,
                ) from None
            if not math.isfinite(weight):
                raise PromptSyntaxError(
                    f"emphasis weight '{number[:20]}' is too large to be a number: write a weight like (word:1.2)",
                    position=m.start("number"),
                    text=text,
                )
            multiply(round_open.pop()[0], weight)
        elif kind == "close" and tok == ")" and round_open:
            multiply(round_open.pop()[0], ROUND_WEIGHT)
        elif kind == "close" and tok == "]" and square_open:
            multiply(square_open.pop()[0], SQUARE_WEIGHT)
        else:
            if warnings is not None and kind in ("close", "weight"):
                warnings.append(
                    PromptWarning(
                        "unbalanced-bracket",
                        f"'{tok.strip()}' closes nothing and is used as text (escape it as \\{tok[-1]} if you meant that)",
                        pos + len(tok) - 1,
                    )
                )
            for i, part in enumerate(_split_breaks(tok)):
                if i:
                    res.append(list(BREAK_MARKER))
                res.append([part, 1.0])

    # Unclosed openers still apply to everything after them, round ones first (A1111's order).
    for start, pos in round_open:
        multiply(start, ROUND_WEIGHT)
        if warnings is not None:
            warnings.append(
                PromptWarning("unbalanced-bracket", "'(' is never closed: everything after it is weighted x1.1", pos)
            )
    for start, pos in square_open:
        multiply(start, SQUARE_WEIGHT)
        if warnings is not None:
            warnings.append(
                PromptWarning("unbalanced-bracket", "'[' is never closed: everything after it is weighted /1.1", pos)
            )

    if not res:
        res = [["", 1.0]]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(fragment, weight)`` pairs with A1111's emphasis rules.

    Raises :class:`~expressiongrid.errors.PromptSyntaxError` (naming the position) where A1111 raises,
    e.g. ``(a:1.2.3)``. Unbalanced brackets are accepted as A1111 accepts them; use
    :func:`parse_attention_with_warnings` to learn about them.

    Example: ``parse_attention("a (b:1.5) [c]") == [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 1/1.1)]``.
    """
    return [Fragment(t, w) for t, w in _parse(text, None)]


def parse_attention_with_warnings(text: str) -> tuple[list[tuple[str, float]], list[PromptWarning]]:
    """Like :func:`parse_attention`, plus a warning for every bracket A1111 silently reads as text or leaves open."""
    warnings: list[PromptWarning] = []
    parsed = [(t, w) for t, w in _parse(text, warnings)]
    for t, w in parsed:
        # A BREAK inside brackets is split off and then multiplied with the bracket's weight, so it is no
        # longer the -1 marker: A1111 sends the word "BREAK" to the text encoder with that (negative) weight.
        if t == "BREAK" and w != -1.0 and w <= 0:
            warnings.append(
                PromptWarning(
                    "break-in-brackets",
                    f"BREAK inside brackets is not a chunk break; the word 'BREAK' is sent to the text encoder "
                    f"with weight {-w:.4g} x -1 (move BREAK outside the brackets)",
                    text.find("BREAK"),
                )
            )
            break
    return parsed, warnings


def is_break(fragment: tuple[str, float]) -> bool:
    """True for the chunk-break marker produced by a bare ``BREAK``."""
    return fragment[0] == "BREAK" and fragment[1] == -1
