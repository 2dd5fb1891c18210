"""The self-contained HTML report: images inline as data URIs, plots as inline SVG, no external files.

The page is drawn from the templates in ``templates/report/`` (Jinja2 with autoescaping): every text that
comes from a user (labels, prompts, file names) is escaped by the template engine; the per-cell details
travel as JSON inside a ``<script type="application/json">`` block (``tojson`` escapes ``<``), and the page's
script only ever sets ``textContent``, so a label such as ``<script>`` is shown as text. This module only
computes what the templates show.
"""

from __future__ import annotations

import base64
import io
import json

from markupsafe import Markup

from expressiongrid.report.data import ReportCell, ReportData
from expressiongrid.text import count_noun as _count
from expressiongrid.templating import render_template
from expressiongrid.text import isolate, shorten

THUMB_SIDE = 160
GRID_MAX_SIDE = 2048


def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _data_uri(image, side: int, fmt: str = "JPEG") -> str:
    image = image.convert("RGB")
    if max(image.size) > side:
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=85)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(data: ReportData, cell: ReportCell | None) -> str | None:
    from PIL import Image

    if cell is None or cell.status != "done" or not cell.file:
        return None
    try:
        with Image.open(data.run_dir / cell.file) as im:
            return _data_uri(im, THUMB_SIDE)
    except OSError:
        return None


def _heat_colour(v: float | None) -> str:
    if v is None:
        return "#eeeeee"
    v = max(0.0, min(1.0, v))
    # white (0) to green (1): light enough that black text stays readable
    return f"rgb({int(255 - 155 * v)},{int(255 - 50 * v)},{int(255 - 155 * v)})"


def _cell_fields(data: ReportData, cell: ReportCell) -> list[list[str]]:
    row_axis, col_axis = data.axis_names
    fields = [[row_axis, cell.row_label], [col_axis, cell.col_label], ["status", cell.status],
              ["seed", str(cell.seed)], ["prompt", cell.prompt]]
    if cell.error:
        fields.append(["error", cell.error])
    if cell.measured:
        fields += [["face found", "yes" if cell.face_found else "no (a finding: this cell shows no face)"],
                   ["fidelity", _fmt(cell.fidelity)], ["reference fidelity", _fmt(cell.reference_fidelity)],
                   ["identity distance to own neutral", _fmt(cell.identity_to_neutral)],
                   ["nearest other character", _fmt(cell.identity_to_others)],
                   ["entropy (bits)", _fmt(cell.entropy)], ["noise sigma", _fmt(cell.noise)],
                   ["CLIP score", _fmt(cell.clip_score)], ["aesthetic", _fmt(cell.aesthetic)]]
        if cell.aus:
            fields.append(["AUs", ", ".join(f"{k} {v:.2f}" for k, v in cell.aus.items() if v > 0) or "none"])
        if cell.emotions:
            top = sorted(cell.emotions.items(), key=lambda kv: -kv[1])
            fields.append(["emotion classifier", ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.01)])
        if cell.emotion and cell.emotion_score is not None:
            fields.append([f"P({cell.emotion}), the row's emotion", _fmt(cell.emotion_score)])
        if cell.identity_flag:
            fields.append(["identity flag", cell.identity_flag])
        if cell.note:
            fields.append(["note", cell.note])
    return fields


# Label room in the charts at the report's 14 px font (about 7.5 px a character): the bar chart's 200 px
# label column, the scatter plot's 280 px legend. Longer labels are cut, in full in their tooltip.
LABEL_CHARS, LEGEND_CHARS = 26, 36


def bar_chart(title: str, items: list[tuple[str, list[float | None]]], series: list[str],
              colours: list[str], width: int = 640) -> Markup:
    """A horizontal bar chart as inline SVG; values in [0, 1]; one bar per series per item."""
    bar_h, gap, label_w = 14, 10, 200
    group_h = bar_h * len(series) + gap
    height = 36 + group_h * len(items) + 20 * len(series)
    plot_w = width - label_w - 50
    groups, y = [], 26
    for label, values in items:
        bars = [{"y": y + i * bar_h, "w": 0 if v is None else max(0.0, min(1.0, v)) * plot_w,
                 "colour": colours[i], "series": series[i], "text": _fmt(v)} for i, v in enumerate(values)]
        groups.append({"label": label, "short": shorten(label, LABEL_CHARS), "y": y, "bars": bars})
        y += group_h
    legend = [{"y": y + 20 * i, "colour": colours[i], "name": name} for i, name in enumerate(series)]
    return Markup(render_template("report/bar_chart.svg", title=title, width=width, height=height, bar_h=bar_h,
                                  label_w=label_w, groups=groups, legend=legend))


PALETTE = ["#1c7ed6", "#e8590c", "#2b8a3e", "#ae3ec9", "#f59f00", "#0c8599", "#c2255c", "#5c940d", "#495057"]


def scatter_plot(data: ReportData, width: int = 820, height: int = 360) -> Markup:
    """Fidelity (x) against identity distance to the character's own neutral face (y), one dot per cell.

    The dashed line is the same-person threshold: dots above it have stopped looking like their character,
    dots on the right show their expression strongly. The trade-off people otherwise judge by eye.
    """
    from expressiongrid.analysis.identity import IDENTITY_THRESHOLD

    cells = [c for c in data.cells if c.fidelity is not None and c.identity_to_neutral is not None
             and c.col_id not in data.reference]
    if not cells:
        return Markup("")
    left, top, plot_w, plot_h = 50, 30, 460, height - 70
    y_max = max(1.0, max(c.identity_to_neutral for c in cells) * 1.1)

    def px(f, d):
        return left + f * plot_w, top + plot_h - d / y_max * plot_h

    colours = {}
    for col_id, label in data.columns:
        if col_id not in data.reference:
            colours[col_id] = (PALETTE[len(colours) % len(PALETTE)], label)
    dots = []
    for c in cells:
        x, y = px(c.fidelity, c.identity_to_neutral)
        dots.append({"x": x, "y": y, "key": c.key, "colour": colours.get(c.col_id, (PALETTE[-1], c.col_label))[0],
                     "title": f"{isolate(c.col_label)} – {isolate(c.row_label)}: fidelity {_fmt(c.fidelity)}, "
                              f"distance {_fmt(c.identity_to_neutral)}"})
    legend = [{"y": top + 14 + 18 * i, "colour": colour, "label": label, "short": shorten(label, LEGEND_CHARS)}
              for i, (colour, label) in enumerate(colours.values())]
    return Markup(render_template(
        "report/scatter.svg", title="Expression strength vs likeness, per cell", width=width, height=height,
        left=left, top=top, plot_w=plot_w, plot_h=plot_h, y_max=y_max, threshold=IDENTITY_THRESHOLD,
        threshold_y=px(0, IDENTITY_THRESHOLD)[1], dots=dots, legend=legend))


def _heatmap(data: ReportData, page: int, cell_json: dict) -> dict:
    rows = []
    for row_id, row_label in data.rows:
        cells = []
        for col_id, _ in data.columns:
            cell = data.cell_at(row_id, col_id, page)
            if cell is None:
                cells.append(None)
                continue
            cell_json[cell.key] = {"title": cell.title(), "fields": _cell_fields(data, cell)}
            no_face = cell.measured and not cell.face_found
            cells.append({
                "key": cell.key, "cls": "cell" + (" nf" if no_face else ""), "colour": _heat_colour(cell.fidelity),
                "title": cell.title(), "thumb": _thumb(data, cell), "alt": cell.title(" / "), "flag": bool(cell.identity_flag),
                "text": "no face" if no_face else cell.status if cell.status != "done" else _fmt(cell.fidelity),
            })
        rows.append({"label": row_label, "cells": cells})
    return {"page": page, "rows": rows}


def _character_rows(data: ReportData) -> list[dict]:
    col_labels = dict(data.columns)
    out = []
    for r in sorted(data.characters, key=lambda r: (r["is_reference"], -(r["flexibility"] or -1))):
        label = col_labels.get(r["col_id"], r["col_id"])
        label += " (reference)" if r["is_reference"] and "reference" not in label.lower() else ""
        out.append({"label": label, **{k: _fmt(r[k]) for k in ("flexibility", "reach", "distinctness",
                                                               "identity_stability", "mean_identity_distance")},
                    "flagged": r["flagged"] or 0, "faces": f"{r['faces_found']}/{r['cells']}",
                    "no_face": r["no_face"] or 0, "pose_flagged": r["pose_flagged"] or 0})
    return out


def _expression_rows(data: ReportData) -> list[dict]:
    row_labels = dict(data.rows)
    rows = sorted(data.expressions, key=lambda r: -(r["difficulty"] if r["difficulty"] is not None else -1))
    return [{"label": row_labels.get(r["row_id"], r["row_id"]), "difficulty": _fmt(r["difficulty"]),
             "base_fidelity": _fmt(r["base_fidelity"]), "character_fidelity": _fmt(r["character_fidelity"]),
             "verdict": r["verdict"] or "", "no_face": r["no_face"] or 0, "targets": ", ".join(json.loads(r["targets_json"] or "[]")),
             "unmeasured": ", ".join(json.loads(r["unmeasured_json"] or "[]"))} for r in rows]


def _rankings(data: ReportData) -> dict | None:
    if not data.rankings:
        return None
    agreement = None
    if data.agreement and data.agreement.get("kendall_tau") is not None:
        agreement = {"tau": _fmt(data.agreement["kendall_tau"]), "accuracy": _fmt(data.agreement["pairwise_accuracy"]),
                     "answers": data.agreement["answers"]}
    questions = [{"text": q["text"], "subject": q["subject"], "entries": [
        {"rank": it["rank"], "label": str(it["label"]), "score": _fmt(it["score"]), "low": _fmt(it["ci95"][0]),
         "high": _fmt(it["ci95"][1]), "wins": f"{it['wins']:g}", "comparisons": f"{it['comparisons']:g}"}
        for it in q["items"]]} for q in data.rankings["questions"] if q["answers"]]
    return {"answers": data.rankings["answers"], "judges": _count(len(data.rankings["judges"]), "judge"),
            "agreement": agreement, "questions": questions}


def _grids(data: ReportData) -> list[dict]:
    from PIL import Image

    out = []
    for path in data.grids:
        with Image.open(path) as im:
            out.append({"uri": _data_uri(im, GRID_MAX_SIDE), "name": path.name})
    return out


def _answers(data: ReportData) -> dict:
    from expressiongrid.report.answers import answers

    a = answers(data)
    return {
        "groups": [{"attribute": c.attribute, "p": f"{c.p_value:.3f}", "statistic": _fmt(c.statistic), "note": c.note,
                    "groups": [{"name": g.name, "n": len(g.characters), "members": ", ".join(g.characters),
                                "mean": _fmt(g.mean), "low": _fmt(g.low), "high": _fmt(g.high)} for g in c.groups]}
                   for c in a.groups],
        "hint": a.grouping_hint,
        "lists": [(title, [{"label": lbl, "base": _fmt(b), "chars": _fmt(ch)} for lbl, b, ch in items])
                  for title, items in (("Easy for the base model but lost with characters", a.lost),
                                       ("Hard even for the base model", a.hard),
                                       ("Reached by the base model and kept by characters", a.kept))],
        "not_measured": a.not_measured,
    }


def render_html(data: ReportData) -> str:
    """The whole report as one HTML string."""
    cell_json: dict = {}
    heatmaps = [_heatmap(data, page, cell_json) for page in data.pages]
    row_labels, col_labels = dict(data.rows), dict(data.columns)
    charts = []
    if data.characters:
        chars = [r for r in data.characters if not r["is_reference"]]
        charts.append(bar_chart(
            "Flexibility and identity stability per character",
            [(col_labels.get(r["col_id"], r["col_id"]), [r["flexibility"], r["identity_stability"]]) for r in chars],
            ["flexibility", "identity stability"], ["#2b8a3e", "#1c7ed6"]))
    if data.expressions:
        charts.append(bar_chart(
            "Fidelity per expression: base model vs characters",
            [(row_labels.get(r["row_id"], r["row_id"]), [r["base_fidelity"], r["character_fidelity"]])
             for r in data.expressions], ["base model (reference)", "characters (mean)"], ["#868e96", "#e8590c"]))
    scatter = scatter_plot(data)
    if scatter:
        charts.append(scatter)
    return render_template(
        "report/report.html", title=data.title, size=data.size, axis_names=data.axis_names, axes_title=data.axes_title,
        n_done=sum(1 for c in data.cells if c.status == "done"), notes=data.notes, heatmaps=heatmaps,
        column_labels=[label for _, label in data.columns], characters=_character_rows(data) if data.characters else [],
        expressions=_expression_rows(data) if data.expressions else [], charts=charts, rankings=_rankings(data),
        answers=_answers(data) if data.analysed else None,
        grids=_grids(data), cell_data=cell_json)
