"""The study's questions answered from a run's scores, for the HTML report and the article alike.

- Do groups of characters differ (LoRA vs embedding, celebrity vs nobody, one creator vs another)?
  ``analysis.groups.compare_groups`` on the characters' flexibility.
- Which expressions are easy for the reference column but lost with characters, which are hard even for
  the reference, which are kept: the expression verdicts (docs/scores.md), listed like the seed study's
  conclusions.
- What the seed posts measured that this tool does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from expressiongrid.analysis.groups import NOT_MEASURED, GroupComparison, compare_groups
from expressiongrid.analysis.scores import VERDICT_HARD, VERDICT_KEPT, VERDICT_LOST
from expressiongrid.report.data import ReportData


@dataclass
class Answers:
    groups: list[GroupComparison] = field(default_factory=list)
    lost: list[tuple[str, float, float]] = field(default_factory=list)   # (label, base, characters)
    hard: list[tuple[str, float, float | None]] = field(default_factory=list)
    kept: list[tuple[str, float, float]] = field(default_factory=list)
    grouping_hint: str | None = None
    not_measured: list[tuple[str, str]] = field(default_factory=lambda: list(NOT_MEASURED))


def answers(data: ReportData) -> Answers:
    out = Answers()
    labels = dict(data.columns)
    chars = {r["col_id"]: (r["flexibility"], data.column_attributes.get(r["col_id"], {}))
             for r in data.characters if not r["is_reference"]}
    out.groups = compare_groups(chars)
    for comparison in out.groups:
        for g in comparison.groups:
            g.characters = [labels.get(c, c) for c in g.characters]
    if not out.groups and chars:
        out.grouping_hint = ("no groups to compare: give the character files [tags] group = \"...\" (e.g. celebrity, "
                             "nobody), with at least three measured characters in two groups, or mix LoRAs and "
                             "embeddings")
    rows = dict(data.rows)
    for r in sorted(data.expressions, key=lambda r: -(r["loss"] or 0)):
        entry = (rows.get(r["row_id"], r["row_id"]), r["base_fidelity"], r["character_fidelity"])
        if r["verdict"] == VERDICT_LOST:
            out.lost.append(entry)
        elif r["verdict"] == VERDICT_HARD:
            out.hard.append(entry)
        elif r["verdict"] == VERDICT_KEPT:
            out.kept.append(entry)
    return out
