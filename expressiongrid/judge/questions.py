"""The questions a judge answers, built from a run's cells.

Two kinds, matching what the grid is for:

- ``expression``: one per expression row (and page): "Which face shows <expression> better?" comparing
  that row's cells across the characters (the reference column included, as the baseline).
- ``identity``: one per character column (and page): "Which looks more like the same person as this
  reference?" comparing the column's other expressions against the character's neutral cell, shown above
  the pair. The neutral row is the one whose id or label is (or else mentions) "neutral", else the first
  (``study.expressions.neutral_row_id``, shared with the analysis scores).

Only finished cells ("done" with a file) take part: a failed cell has no image to judge.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from expressiongrid.study.expressions import neutral_row_id
from expressiongrid.text import isolate


class CellLike(Protocol):
    key: str
    page: int
    row_index: int
    col_index: int
    row_id: str
    row_label: str
    col_id: str
    col_label: str
    status: str
    file: str | None


@dataclass
class Question:
    """A set of cells to rank against each other, with the question shown above each pair."""

    id: str
    kind: str  # "expression" | "identity"
    text: str
    subject: str  # the expression label (expression) or the character label (identity)
    items: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    reference_key: str | None = None
    row_id: str | None = None
    col_id: str | None = None
    page: int = 0
    page_label: str = ""

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "text": self.text,
            "subject": self.subject,
            "row_id": self.row_id,
            "col_id": self.col_id,
            "page": self.page,
            "page_label": self.page_label,
            "reference_key": self.reference_key,
        }


def _neutral_row(cells: list) -> str:
    """The row id of the column's neutral expression (``study.expressions.neutral_row_id``, the rule the
    scores use); an expression set without a neutral row still gets identity questions, against its first."""
    return neutral_row_id({"id": c.row_id, "label": c.row_label} for c in cells)


def _labels(cells: list, label_of) -> dict[str, str]:
    """Item labels, numbered when one label occurs more than once (several seeds per cell)."""
    counts: dict[str, int] = defaultdict(int)
    for c in cells:
        counts[label_of(c)] += 1
    seen: dict[str, int] = defaultdict(int)
    out = {}
    for c in cells:
        label = label_of(c)
        seen[label] += 1
        out[c.key] = f"{isolate(label)} #{seen[label]}" if counts[label] > 1 else label
    return out


def build_questions(cells: Iterable[CellLike], kinds: Iterable[str] = ("expression", "identity")) -> list[Question]:
    """Questions for the finished cells of a run, expression questions first, in grid order.

    A question needs at least two cells to compare; rows or columns with fewer are left out.
    """
    kinds = set(kinds)
    done = [c for c in cells if c.status == "done" and c.file]
    done.sort(key=lambda c: (c.page, c.row_index, c.col_index, c.key))
    questions: list[Question] = []

    if "expression" in kinds:
        by_row: dict[tuple[int, int], list] = defaultdict(list)
        for c in done:
            by_row[(c.page, c.row_index)].append(c)
        for (page, _), row_cells in sorted(by_row.items()):
            if len(row_cells) < 2:
                continue
            first = row_cells[0]
            questions.append(
                Question(
                    id=f"expr:{first.row_id}:p{page}",
                    kind="expression",
                    text=f"Which face shows {isolate(first.row_label)} better?",
                    subject=first.row_label,
                    items=[c.key for c in row_cells],
                    labels=_labels(row_cells, lambda c: c.col_label),
                    row_id=first.row_id,
                    page=page,
                    page_label=getattr(first, "page_label", "") or "",
                )
            )

    if "identity" in kinds:
        by_col: dict[tuple[int, int], list] = defaultdict(list)
        for c in done:
            by_col[(c.page, c.col_index)].append(c)
        for (page, _), col_cells in sorted(by_col.items()):
            col_cells.sort(key=lambda c: c.row_index)
            neutral_row = _neutral_row(col_cells)
            neutral = next(c for c in col_cells if c.row_id == neutral_row)
            others = [c for c in col_cells if c.row_id != neutral_row]
            if len(others) < 2:
                continue
            questions.append(
                Question(
                    id=f"ident:{neutral.col_id}:p{page}",
                    kind="identity",
                    text="Which looks more like the same person as this reference?",
                    subject=neutral.col_label,
                    items=[c.key for c in others],
                    labels=_labels(others, lambda c: c.row_label),
                    reference_key=neutral.key,
                    col_id=neutral.col_id,
                    page=page,
                    page_label=getattr(neutral, "page_label", "") or "",
                )
            )
    return questions
