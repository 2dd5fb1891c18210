"""Expression sets: the rows of an expression study, kept in TOML files under ``expressions/``.

A set file looks like::

    [set]
    id = "seed-study"
    title = "Seed study rows"
    description = "..."          # optional
    source = "..."               # optional: where the wording comes from

    [[expression]]
    id = "neutral"               # unique in the set: letters, digits, "-" and "_"
    label = "neutral"            # the grid's row label
    prompt = "neutral face expression"   # goes into the study prompt's {expression}
    action_units = [4, 15, "R12"]        # FACS action units it should show (may be empty)
    notes = "..."                # optional

Every problem in a file is reported at once, each with the file, the key and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from expressiongrid.errors import StudyError
from expressiongrid.text import slug


__all__ = [
    "neutral_row_id",
    "Expression",
    "ExpressionSet",
    "ExpressionSetError",
    "builtin_sets_dir",
    "expression_set_files",
    "find_expression_set",
    "inline_expressions",
    "list_expression_sets",
    "load_expression_set",
    "normalise_action_unit",
]


class ExpressionSetError(StudyError):
    """An expression set file is missing or invalid; `problems` lists every problem found."""


@dataclass(frozen=True)
class Expression:
    """One row of an expression study.

    `action_units` are FACS action units as strings: ``"12"``, ``"R12"`` (right side only), ``"12C"``
    (with intensity A-E).
    """

    id: str
    label: str
    prompt: str
    action_units: tuple[str, ...] = ()
    notes: str = ""

    @property
    def au_numbers(self) -> tuple[int, ...]:
        """The action-unit numbers without side or intensity (``"R12"`` -> 12), for analysis."""
        return tuple(int(re.sub(r"\D", "", au)) for au in self.action_units)


@dataclass(frozen=True)
class ExpressionSet:
    """A named, ordered list of expressions loaded from one file (or typed inline)."""

    id: str
    title: str
    expressions: tuple[Expression, ...]
    description: str = ""
    source: str = ""
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.expressions)

    def __iter__(self):
        return iter(self.expressions)

    def get(self, expression_id: str) -> Expression:
        """The expression with this id; ExpressionSetError naming the ids there are otherwise."""
        for expression in self.expressions:
            if expression.id == expression_id:
                return expression
        ids = ", ".join(e.id for e in self.expressions)
        where = self.path or self.id
        raise ExpressionSetError(f"{where}: no expression {expression_id!r}; the set has: {ids}")

    def select(self, ids: Iterable[str]) -> "ExpressionSet":
        """A copy with only `ids`, in the order given."""
        chosen = tuple(self.get(i) for i in ids)
        return ExpressionSet(self.id, self.title, chosen, self.description, self.source, self.path)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_AU = re.compile(r"(?:AU)?\s*([LRUT]?)(\d{1,2})([A-E]?)", re.IGNORECASE)


def normalise_action_unit(value: Any) -> str:
    """``6`` / ``"AU6"`` / ``"r12"`` / ``"12c"`` -> ``"6"``, ``"6"``, ``"R12"``, ``"12C"``; ValueError if not an AU."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(value)
    m = _AU.fullmatch(str(value).strip())
    if m is None or not 1 <= int(m.group(2)) <= 99:
        raise ValueError(value)
    side, number, intensity = m.groups()
    return f"{side.upper()}{int(number)}{intensity.upper()}"


def _check_prompt_text(text: str) -> str | None:
    """Why `text` would break the study prompt it is put into, or None.

    Expression text lands inside A1111 syntax such as ``[hair, neck: {expression}: 0.2]``: an
    unbalanced bracket or a bare ``:``/``|`` outside brackets would change the schedule silently.
    """
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for ch in text:
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return f"an unmatched {ch!r}"
        elif ch in ":|" and not any(depth.values()):
            return f"a {ch!r} outside brackets (it would split a [from: to: when] edit)"
    open_ = [k for k, v in depth.items() if v]
    if open_:
        return f"an unclosed {open_[0]!r}"
    return None


def _parse_expressions(data: Any, where: str, problems: list[str]) -> list[Expression]:
    if not isinstance(data, list) or not data:
        problems.append(f"{where}: [[expression]]: expected at least one [[expression]] table")
        return []
    out: list[Expression] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(data):
        key = f"expression[{index + 1}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: {key}: expected a table")
            continue
        ok = True

        def text(name: str, required: bool) -> str:
            nonlocal ok
            value = entry.get(name)
            if value is None and not required:
                return ""
            if not isinstance(value, str) or (required and not value.strip()):
                got = "nothing" if value is None else repr(value)
                problems.append(f"{where}: {key}.{name}: expected a non-empty string, got {got}")
                ok = False
                return ""
            return value.strip()

        expr_id = text("id", True)
        label = text("label", True)
        prompt = text("prompt", True)
        notes = text("notes", False)
        if expr_id and not _ID.fullmatch(expr_id):
            problems.append(
                f"{where}: {key}.id: expected letters, digits, '-' or '_' (no spaces), got {expr_id!r}"
            )
            ok = False
        elif expr_id in seen:
            problems.append(
                f"{where}: {key}.id: {expr_id!r} is already used by expression[{seen[expr_id]}]; ids must be unique"
            )
            ok = False
        elif expr_id:
            seen[expr_id] = index + 1
        if prompt:
            why = _check_prompt_text(prompt)
            if why:
                problems.append(f"{where}: {key}.prompt: {prompt!r} has {why}")
                ok = False
        aus_raw = entry.get("action_units", [])
        aus: list[str] = []
        if not isinstance(aus_raw, list):
            problems.append(f"{where}: {key}.action_units: expected a list such as [6, 12] or [\"R12\"], got {aus_raw!r}")
            ok = False
        else:
            for au in aus_raw:
                try:
                    aus.append(normalise_action_unit(au))
                except ValueError:
                    problems.append(
                        f"{where}: {key}.action_units: expected FACS action units such as 6, \"AU12\" "
                        f"or \"R12\", got {au!r}"
                    )
                    ok = False
        unknown = sorted(set(entry) - {"id", "label", "prompt", "action_units", "notes"})
        if unknown:
            problems.append(
                f"{where}: {key}: unknown key(s) {', '.join(unknown)}; expected id, label, prompt, action_units, notes"
            )
            ok = False
        if ok:
            out.append(Expression(expr_id, label, prompt, tuple(dict.fromkeys(aus)), notes))
    return out


def load_expression_set(path: str | os.PathLike) -> ExpressionSet:
    """Load and validate an expression set file; ExpressionSetError lists every problem in it."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise ExpressionSetError(
            f"{where}: expression set not found; give a .toml file or one of: "
            f"{', '.join(s.id for s in list_expression_sets()) or '(no built-in sets found)'}"
        )
    from expressiongrid.paths import read_text_file

    try:
        data = tomllib.loads(read_text_file(path, "expression set", ExpressionSetError))
    except tomllib.TOMLDecodeError as exc:
        raise ExpressionSetError(f"{where}: not valid TOML: {exc}") from None

    problems: list[str] = []
    header = data.get("set", {})
    if not isinstance(header, dict):
        problems.append(f"{where}: set: expected a [set] table with id and title")
        header = {}
    set_id = header.get("id", path.stem.replace("_", "-"))
    if not isinstance(set_id, str) or not _ID.fullmatch(set_id):
        problems.append(f"{where}: set.id: expected letters, digits, '-' or '_', got {set_id!r}")
        set_id = path.stem
    title = header.get("title", set_id)
    for name in ("title", "description", "source"):
        if name in header and not isinstance(header[name], str):
            problems.append(f"{where}: set.{name}: expected a string, got {header[name]!r}")
    unknown = sorted(set(data) - {"set", "expression"})
    if unknown:
        problems.append(f"{where}: unknown top-level key(s) {', '.join(unknown)}; expected [set] and [[expression]]")
    expressions = _parse_expressions(data.get("expression"), where, problems)
    if problems:
        count = len(problems)
        raise ExpressionSetError(
            f"{where}: {count} problem{'s' if count > 1 else ''} in expression set", problems
        )
    return ExpressionSet(
        id=set_id,
        title=str(title),
        expressions=tuple(expressions),
        description=str(header.get("description", "")),
        source=str(header.get("source", "")),
        path=path,
    )


def inline_expressions(items: Iterable[str], source: str = "inline") -> ExpressionSet:
    """An expression set from plain prompt texts (label = prompt text, no target action units)."""
    expressions: list[Expression] = []
    used: dict[str, int] = {}
    problems: list[str] = []
    for item in items:
        text = item.strip()
        why = _check_prompt_text(text)
        if why:
            problems.append(f"{source}: expression {text!r} has {why}")
            continue
        base = slug(text, fallback="expression")
        used[base] = used.get(base, 0) + 1
        expr_id = base if used[base] == 1 else f"{base}-{used[base]}"
        expressions.append(Expression(expr_id, text, text))
    if len(problems) == 1:
        raise ExpressionSetError(problems[0])
    if problems:
        raise ExpressionSetError(f"{source}: {len(problems)} invalid expressions", problems)
    return ExpressionSet("inline", "inline expressions", tuple(expressions))


def builtin_sets_dir() -> Path:
    """The expression sets shipped inside the package (``expressions/`` in a checkout links there)."""
    return Path(__file__).resolve().parents[1] / "data" / "expressions"


def _search_dirs(base_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if base_dir is not None:
        dirs += [Path(base_dir), Path(base_dir) / "expressions"]
    dirs += [Path.cwd() / "expressions", builtin_sets_dir()]
    return dirs


def find_expression_set(name: str, base_dir: str | os.PathLike | None = None) -> Path | None:
    """The file for `name`: a path to a .toml file, or a set name such as ``seed-study``; None if neither.

    Relative paths are tried against `base_dir` (e.g. the study file's folder) first. Set names match
    file stems with ``-`` and ``_`` treated alike.
    """
    if not name:
        return None
    candidate = Path(name).expanduser()
    if candidate.suffix.lower() == ".toml":
        if candidate.is_absolute():
            return candidate
        for d in ([Path(base_dir)] if base_dir is not None else []) + [Path.cwd()]:
            if (d / candidate).is_file():
                return d / candidate
        return candidate  # let the loader report it as missing
    if any(sep in name for sep in "/\\") or "," in name or "\n" in name:
        return None
    wanted = name.strip().lower().replace("_", "-")
    for d in _search_dirs(base_dir):
        if not d.is_dir():
            continue
        for file in sorted(d.glob("*.toml")):
            if file.stem.lower().replace("_", "-") == wanted:
                return file
    return None


def expression_set_files(base_dir: str | os.PathLike | None = None) -> list[Path]:
    """The .toml files of the search folders, one per set name (the first folder wins)."""
    found: dict[str, Path] = {}
    for d in _search_dirs(base_dir):
        if not d.is_dir():
            continue
        for file in sorted(d.glob("*.toml")):
            found.setdefault(file.stem.lower().replace("_", "-"), file)
    return list(found.values())


def list_expression_sets(base_dir: str | os.PathLike | None = None) -> list[ExpressionSet]:
    """Every valid set in the search folders; broken files are left out (`expression_set_files` lists all)."""
    sets = []
    for file in expression_set_files(base_dir):
        try:
            sets.append(load_expression_set(file))
        except ExpressionSetError:
            continue
    return sets


def neutral_row_id(rows) -> str:
    """The row every other row of a column is read against, by one rule for the scores and the judging
    questions: the row whose id or label is "neutral", else the first whose id or label mentions it, else the
    first row. ``rows`` are dicts with ``id`` and ``label`` in grid order."""
    rows = list(rows)

    def words(row):
        return str(row.get("id", "")).strip().lower(), str(row.get("label", "")).strip().lower()

    for test in (lambda r: "neutral" in (words(r)), lambda r: any("neutral" in w for w in words(r))):
        match = next((r for r in rows if test(r)), None)
        if match is not None:
            return match["id"]
    return rows[0]["id"]
