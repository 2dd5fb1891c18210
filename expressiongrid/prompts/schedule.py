"""Prompt editing: ``[from:to:when]``, ``[to:when]``, ``[from::when]`` and ``[a|b|...]`` alternation.

A hand-written recursive-descent parser for the grammar A1111 accepts (see docs/prompt-syntax.md):

* At the top level, any of ``[ ] ( ) :`` that does not open or belong to a well-formed construct is kept
  as literal text ("stray"). Inside a construct every bracket must be well formed.
* ``|`` is only valid inside an alternation, and a backslash must escape a character on the same line;
  anything else makes the whole prompt fail to parse, and A1111 then uses the prompt literally with all
  editing disabled. We do the same and report a :class:`PromptWarning`.
* A1111's parser is ambiguous for some prompts (it picks a reading at random per launch). We always
  prefer the structured reading of a bracket at the leftmost position, which is one of A1111's readings
  and never depends on hash seeds.

Only ``[...]`` constructs change the text; everything else, including emphasis brackets and their
weights, is copied verbatim and interpreted later by :func:`expressiongrid.prompts.parse_attention`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from expressiongrid.limits import MAX_NESTING
from expressiongrid.prompts.pairs import ScheduleEntry
from expressiongrid.prompts.warnings import PromptWarning

# A1111's NUMBER (lark common.SIGNED_NUMBER): ASCII digits, optional sign, decimal point and exponent.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WHITESPACE = re.compile(r"\s+")
_PLAIN_STOP = "\\[]():|"
# Deeper nesting than this is certainly not a real prompt; refusing it keeps the parser from
# overflowing Python's stack on adversarial input (A1111 would crash in the same place).
MAX_DEPTH = MAX_NESTING


@dataclass
class Seq:
    items: list = field(default_factory=list)


@dataclass
class Scheduled:
    before: Seq | None
    after: Seq
    number: str  # the NUMBER token as written (sign, dot and exponent decide its meaning)
    start: int  # offset of the "[" in the prompt
    end: int  # offset just after the "]"


@dataclass
class Alternate:
    options: list  # Seq or None (an empty option)
    start: int
    end: int


@dataclass
class ParseResult:
    """The parsed tree, or ``tree=None`` when the prompt fails to parse (then it is used literally)."""

    tree: Seq | None
    warnings: list[PromptWarning]


class _Fail(Exception):
    """Internal: this construct cannot be read here."""


class _FatalFail(Exception):
    """Internal: the whole prompt cannot be parsed (A1111 then uses it literally)."""

    def __init__(self, kind: str, message: str, position: int):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.position = position


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.n = len(text)
        # A bracket read in nested mode always parses the same way, so remember it: keeps the
        # top-level retry (structured first, stray otherwise) linear instead of quadratic.
        self.memo: dict[int, tuple[object, int] | None] = {}

    # -- top level: constructs, plain text and stray brackets ------------------------------------------
    def parse(self) -> ParseResult:
        warnings: list[PromptWarning] = []
        items: list = []
        text, i, n = self.text, 0, self.n
        try:
            while i < n:
                c = text[i]
                if c in "[(":
                    got = self.bracket(i, 1)
                    if got is not None:
                        items.append(got[0])
                        i = got[1]
                        continue
                    if c == "[":
                        warnings.append(self._stray_warning(i))
                    items.append(c)
                    i += 1
                elif c in "]):":
                    items.append(c)
                    i += 1
                elif c == "|":
                    raise _FatalFail(
                        "schedule-parse-failed",
                        "'|' outside an alternation [a|b]; the whole prompt is used literally and its prompt "
                        "editing is ignored (escape it as \\| if you meant the character)",
                        i,
                    )
                else:
                    j = self.plain(i)
                    items.append(text[i:j])
                    i = j
        except _FatalFail as exc:
            return ParseResult(None, [PromptWarning(exc.kind, exc.message, exc.position)])
        return ParseResult(Seq(items), warnings)

    def _stray_warning(self, i: int) -> PromptWarning:
        close = self.text.find("]", i + 1)
        if close < 0:
            return PromptWarning(
                "unbalanced-bracket", "'[' is never closed; it is kept as text (and weakens the rest by emphasis)", i
            )
        inner = self.text[i + 1 : close]
        if ":" in inner or "|" in inner:
            return PromptWarning(
                "literal-edit",
                f"'{self.text[i : close + 1]}' looks like prompt editing but is not valid "
                "([from:to:when] needs a number after the last ':'); it is used as text",
                i,
            )
        return PromptWarning("stray-bracket", "'[' does not start a valid construct; it is kept as text", i)

    # -- lexical pieces -------------------------------------------------------------------------------
    def plain(self, i: int) -> int:
        """End of the plain-text run at ``i`` (escapes included); ``i`` must not be a special char."""
        text, n = self.text, self.n
        j = i
        while j < n:
            c = text[j]
            if c == "\\":
                if j + 1 >= n or text[j + 1] == "\n":
                    raise _FatalFail(
                        "schedule-parse-failed",
                        "a backslash at the end of a line escapes nothing; the whole prompt is used literally "
                        "and its prompt editing is ignored (write \\\\ for a backslash)",
                        j,
                    )
                j += 2
                continue
            if c in _PLAIN_STOP:
                break
            j += 1
        return j

    def number_close(self, i: int) -> tuple[str, int] | None:
        """``[WS] NUMBER [WS] ]`` at ``i``: the number text and the offset after ``]``."""
        text = self.text
        m = _WHITESPACE.match(text, i)
        if m:
            i = m.end()
        m = _NUMBER.match(text, i)
        if not m:
            return None
        number, i = m.group(0), m.end()
        m = _WHITESPACE.match(text, i)
        if m:
            i = m.end()
        if i < self.n and text[i] == "]":
            return number, i + 1
        return None

    # -- nested constructs ----------------------------------------------------------------------------
    def prompt(self, i: int, depth: int) -> tuple[Seq, int]:
        """A run of plain text and well-formed constructs, ending before ``] ) : |`` or the end."""
        text, n = self.text, self.n
        items: list = []
        while i < n:
            c = text[i]
            if c in "[(":
                got = self.bracket(i, depth)
                if got is None:
                    raise _Fail
                items.append(got[0])
                i = got[1]
            elif c in "]):|":
                break
            else:
                j = self.plain(i)
                items.append(text[i:j])
                i = j
        return Seq(items), i

    def bracket(self, i: int, depth: int):
        if i in self.memo:
            return self.memo[i]
        if depth > MAX_DEPTH:
            raise _FatalFail(
                "too-deep",
                f"brackets nested more than {MAX_DEPTH} deep; the prompt is used literally",
                i,
            )
        try:
            got = self._square(i, depth) if self.text[i] == "[" else self._round(i, depth)
        except _Fail:
            got = None
        self.memo[i] = got
        return got

    def _expect(self, i: int, chars: str) -> str:
        if i < self.n and self.text[i] in chars:
            return self.text[i]
        raise _Fail

    def _round(self, i: int, depth: int):
        # "(" prompt ")"  |  "(" prompt ":" prompt ")"; kept verbatim (emphasis is parsed later).
        first, j = self.prompt(i + 1, depth + 1)
        c = self._expect(j, ":)")
        if c == ")":
            return Seq(["(", first, ")"]), j + 1
        second, k = self.prompt(j + 1, depth + 1)
        self._expect(k, ")")
        return Seq(["(", first, ":", second, ")"]), k + 1

    def _square(self, i: int, depth: int):
        first, j = self.prompt(i + 1, depth + 1)
        c = self._expect(j, "]|:")
        if c == "]":  # emphasis "[...]", verbatim
            return Seq(["[", first, "]"]), j + 1
        if c == "|":
            options: list = [first]
            while j < self.n and self.text[j] == "|":
                option, j = self.prompt(j + 1, depth + 1)
                options.append(option if option.items else None)
            self._expect(j, "]")
            return Alternate(options, i, j + 1), j + 1
        # c == ":" -- "[to:when]" first, else "[from:to:when]"
        got = self.number_close(j + 1)
        if got is not None:
            return Scheduled(None, first, got[0], i, got[1]), got[1]
        second, k = self.prompt(j + 1, depth + 1)
        self._expect(k, ":")
        got = self.number_close(k + 1)
        if got is None:
            raise _Fail
        return Scheduled(first, second, got[0], i, got[1]), got[1]


def parse_schedule_tree(prompt: str) -> ParseResult:
    """Parse ``prompt``'s editing constructs. ``tree`` is ``None`` when A1111 would use it literally."""
    return _Parser(prompt).parse()


# -- evaluation ---------------------------------------------------------------------------------------


def when_to_step(number: str, steps: int, base_steps: int | None = None, old: bool = False) -> int:
    """The step a ``when`` NUMBER stands for, with A1111's rules.

    A number written with a dot is a fraction of the steps; any other number (``5``, ``1e1``, ``-2``)
    is a step count. The result is truncated toward zero and capped at ``steps``. For a second
    (hires) pass, pass the first pass's step count as ``base_steps`` and the hires steps as ``steps``:
    step counts then run across both passes and fractions 1..2 address the hires pass.
    ``old=True`` is A1111's "Old prompt editing timelines": any value below 1 is a fraction.

    A number too large for a float (``1e400``, 400 digits) is infinite: after the last step (or, negative,
    before the first). A1111 stops with ``OverflowError`` on these; any value past the ends means the same.
    """
    value = float(number)
    if old:
        value = value * steps if value < 1 else value
    elif "." in number:
        value = (value - (1.0 if base_steps is not None else 0.0)) * steps
    else:
        value = value - (base_steps if base_steps is not None else 0)
    if not math.isfinite(value):  # only +-inf: NUMBER has no "nan" and inf - 1 or inf * steps stays inf
        return steps if value > 0 else 0
    return min(steps, int(value))


def walk_constructs(node, visit) -> None:
    """Call ``visit`` on every Scheduled/Alternate node, branches not taken included."""
    if isinstance(node, Seq):
        for item in node.items:
            walk_constructs(item, visit)
    elif isinstance(node, Scheduled):
        visit(node)
        if node.before is not None:
            walk_constructs(node.before, visit)
        walk_constructs(node.after, visit)
    elif isinstance(node, Alternate):
        visit(node)
        for option in node.options:
            if option is not None:
                walk_constructs(option, visit)


def _text_at(node, step: int, whens: dict[int, int], out: list[str]) -> None:
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, Seq):
        for item in node.items:
            _text_at(item, step, whens, out)
    elif isinstance(node, Scheduled):
        branch = node.before if step <= whens[id(node)] else node.after
        if branch is not None:
            _text_at(branch, step, whens, out)
    elif isinstance(node, Alternate):
        option = node.options[(step - 1) % len(node.options)]
        if option is not None:
            _text_at(option, step, whens, out)


def schedule_from_tree(tree: Seq, steps: int, base_steps: int | None = None, old: bool = False) -> list[tuple[int, str]]:
    """Evaluate a parsed tree into ``[(end_step, text), ...]`` (see :func:`get_schedule`)."""
    whens: dict[int, int] = {}
    boundaries = {steps}
    has_alternate = False

    def visit(node) -> None:
        nonlocal has_alternate
        if isinstance(node, Scheduled):
            w = when_to_step(node.number, steps, base_steps, old)
            whens[id(node)] = w
            if w >= 1:
                boundaries.add(w)
        else:
            has_alternate = True

    walk_constructs(tree, visit)
    if has_alternate:
        boundaries.update(range(1, steps + 1))
    schedule = []
    for t in sorted(boundaries):
        out: list[str] = []
        _text_at(tree, t, whens, out)
        schedule.append((t, "".join(out)))
    return schedule


def get_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """A1111's prompt-editing schedule: ``[(end_step, text), ...]`` for a pass of ``steps`` model calls.

    Each entry's text is used up to and including its end step (see :func:`schedule_index_for_call`).
    A prompt that fails to parse gives ``[(steps, prompt)]``, as in A1111.

    Example: ``get_schedule("a [cat:dog:0.5]", 10) == [(5, "a cat"), (10, "a dog")]``; the entries are
    :class:`ScheduleEntry` tuples, which also compare equal to A1111's ``[[5, "a cat"], [10, "a dog"]]``.
    """
    result = parse_schedule_tree(prompt)
    if result.tree is None:
        return [ScheduleEntry(steps, prompt)]
    return [ScheduleEntry(end, text) for end, text in schedule_from_tree(result.tree, steps)]


def get_hires_schedule(prompt: str, base_steps: int, hires_steps: int) -> list[tuple[int, str]]:
    """The schedule of a second (hires) pass of ``hires_steps`` calls after a first pass of ``base_steps``.

    Integer ``when`` values count steps across both passes; fractions in 1..2 address the hires pass;
    anything that belongs to the first pass is already "after" for the whole hires pass.
    """
    result = parse_schedule_tree(prompt)
    if result.tree is None:
        return [ScheduleEntry(hires_steps, prompt)]
    return [ScheduleEntry(end, text)
            for end, text in schedule_from_tree(result.tree, hires_steps, base_steps=base_steps)]
