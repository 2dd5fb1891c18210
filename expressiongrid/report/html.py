"""The self-contained HTML report: images inline as data URIs, plots as inline SVG, no external files.

Every text that comes from a user (labels, prompts, file names) goes through ``html.escape``; the per-cell
details travel as JSON inside a ``<script type="application/json">`` block with ``<`` escaped, and the page's
script only ever sets ``textContent``, so a label such as ``<script>`` is shown as text.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape

from expressiongrid.report.data import ReportCell, ReportData
from expressiongrid.report.data import count_noun as _count

THUMB_SIDE = 160
GRID_MAX_SIDE = 2048

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1,h2{font-weight:600} table{border-collapse:collapse;margin:.5em 0 1.5em} th,td{padding:3px 8px;
border:1px solid #ddd;text-align:left;vertical-align:top} th{background:#f4f4f4} td.num{text-align:right}
.heat td.cell{padding:2px;text-align:center;cursor:pointer;min-width:90px} .heat img{display:block;
width:80px;height:80px;object-fit:cover;margin:0 auto} .heat td.cell span{font-size:12px}
.nf{outline:2px dashed #b00} .flag{color:#b00} .note{background:#fff7e0;padding:.4em .8em;border-left:3px solid
#e0a800} #details{position:sticky;bottom:0;background:#fff;border:1px solid #999;padding:.6em;display:none}
#details dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0} #details dt{font-weight:600}
img.grid{max-width:100%;height:auto;border:1px solid #ccc} svg text{font:12px system-ui,sans-serif}
"""

_JS = """
(function(){
  var data = JSON.parse(document.getElementById('cell-data').textContent);
  var box = document.getElementById('details');
  function show(key){
    var c = data[key]; if(!c) return;
    var dl = document.getElementById('details-list');
    while(dl.firstChild) dl.removeChild(dl.firstChild);
    c.fields.forEach(function(f){
      var dt = document.createElement('dt'); dt.textContent = f[0];
      var dd = document.createElement('dd'); dd.textContent = f[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    document.getElementById('details-title').textContent = c.title;
    box.style.display = 'block';
  }
  document.querySelectorAll('[data-key]').forEach(function(el){
    el.addEventListener('click', function(){ show(el.getAttribute('data-key')); });
  });
  document.getElementById('details-close').addEventListener('click', function(){ box.style.display='none'; });
})();
"""


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


def _cell_fields(cell: ReportCell) -> list[list[str]]:
    fields = [["expression", cell.row_label], ["character", cell.col_label], ["status", cell.status],
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
        if cell.identity_flag:
            fields.append(["identity flag", cell.identity_flag])
        if cell.note:
            fields.append(["note", cell.note])
    return fields


def bar_chart(title: str, items: list[tuple[str, list[float | None]]], series: list[str],
              colours: list[str], width: int = 640) -> str:
    """A horizontal bar chart as inline SVG; values in [0, 1]; one bar per series per item."""
    bar_h, gap, label_w = 14, 10, 200
    group_h = bar_h * len(series) + gap
    height = 36 + group_h * len(items) + 20 * len(series)
    plot_w = width - label_w - 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    parts.append(f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>')
    y = 26
    for label, values in items:
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h}" text-anchor="end">{escape(label)}</text>')
        for i, v in enumerate(values):
            w = 0 if v is None else max(0.0, min(1.0, v)) * plot_w
            parts.append(f'<rect x="{label_w}" y="{y + i * bar_h}" width="{w:.1f}" height="{bar_h - 2}" '
                         f'fill="{colours[i]}"><title>{escape(label)} – {escape(series[i])}: {_fmt(v)}</title></rect>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + i * bar_h + bar_h - 3}">{_fmt(v)}</text>')
        y += group_h
    for i, name in enumerate(series):
        parts.append(f'<rect x="{label_w}" y="{y + 20 * i}" width="12" height="12" fill="{colours[i]}"/>'
                     f'<text x="{label_w + 18}" y="{y + 20 * i + 11}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


PALETTE = ["#1c7ed6", "#e8590c", "#2b8a3e", "#ae3ec9", "#f59f00", "#0c8599", "#c2255c", "#5c940d", "#495057"]


def scatter_plot(data: ReportData, width: int = 820, height: int = 360) -> str:
    """Fidelity (x) against identity distance to the character's own neutral face (y), one dot per cell.

    The dashed line is the same-person threshold: dots above it have stopped looking like their character,
    dots on the right show their expression strongly. The trade-off people otherwise judge by eye.
    """
    from expressiongrid.analysis.identity import IDENTITY_THRESHOLD

    cells = [c for c in data.cells if c.fidelity is not None and c.identity_to_neutral is not None
             and c.col_id not in data.reference]
    if not cells:
        return ""
    left, top, plot_w, plot_h = 50, 30, 460, height - 70
    y_max = max(1.0, max(c.identity_to_neutral for c in cells) * 1.1)

    def px(f, d):
        return left + f * plot_w, top + plot_h - d / y_max * plot_h

    title = "Expression strength vs likeness, per cell"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
             f'<text x="{left + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle">fidelity</text>',
             f'<text x="{left - 8}" y="{top + plot_h}" text-anchor="end">0</text>'
             f'<text x="{left - 8}" y="{top + 10}" text-anchor="end">{y_max:.1f}</text>'
             f'<text x="{left + plot_w}" y="{top + plot_h + 14}" text-anchor="end">1</text>',
             f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
             f'text-anchor="middle">identity distance</text>']
    _, ty = px(0, IDENTITY_THRESHOLD)
    parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" stroke="#b00" '
                 f'stroke-dasharray="4 3"><title>same-person threshold {IDENTITY_THRESHOLD}</title></line>')
    colours = {}
    for col_id, label in data.columns:
        if col_id not in data.reference:
            colours[col_id] = (PALETTE[len(colours) % len(PALETTE)], label)
    for c in cells:
        x, y = px(c.fidelity, c.identity_to_neutral)
        colour = colours.get(c.col_id, (PALETTE[-1], c.col_label))[0]
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" fill-opacity="0.8" '
                     f'data-key="{escape(c.key)}"><title>{escape(c.col_label)} – {escape(c.row_label)}: '
                     f'fidelity {_fmt(c.fidelity)}, distance {_fmt(c.identity_to_neutral)}</title></circle>')
    for i, (colour, label) in enumerate(colours.values()):
        y = top + 14 + 18 * i
        parts.append(f'<circle cx="{left + plot_w + 20}" cy="{y - 4}" r="5" fill="{colour}"/>'
                     f'<text x="{left + plot_w + 30}" y="{y}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _heatmap(data: ReportData, page: int, cell_json: dict) -> str:
    head = "".join(f"<th>{escape(label)}</th>" for _, label in data.columns)
    out = [f'<table class="heat"><tr><th>expression \\ character</th>{head}</tr>']
    for row_id, row_label in data.rows:
        out.append(f"<tr><th>{escape(row_label)}</th>")
        for col_id, _ in data.columns:
            cell = data.cell_at(row_id, col_id, page)
            if cell is None:
                out.append("<td></td>")
                continue
            cell_json[cell.key] = {"title": f"{cell.row_label} × {cell.col_label}", "fields": _cell_fields(cell)}
            uri = _thumb(data, cell)
            img = f'<img src="{uri}" alt="{escape(cell.row_label)} / {escape(cell.col_label)}">' if uri else ""
            cls = "cell" + (" nf" if cell.measured and not cell.face_found else "")
            text = ("no face" if cell.measured and not cell.face_found else
                    cell.status if cell.status != "done" else _fmt(cell.fidelity))
            flag = ' <span class="flag" title="identity flag">⚑</span>' if cell.identity_flag else ""
            out.append(f'<td class="{cls}" data-key="{escape(cell.key)}" style="background:{_heat_colour(cell.fidelity)}" '
                       f'title="{escape(cell.row_label)} × {escape(cell.col_label)}">{img}<span>{escape(text)}</span>{flag}</td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _labels(data: ReportData) -> tuple[dict, dict]:
    return dict(data.rows), dict(data.columns)


def _character_table(data: ReportData) -> str:
    _, col_labels = _labels(data)
    rows = sorted(data.characters, key=lambda r: (r["is_reference"], -(r["flexibility"] or -1)))
    out = ["<table><tr><th>#</th><th>character</th><th>flexibility</th><th>reach</th><th>distinctness</th>"
           "<th>identity stability</th><th>mean identity distance</th><th>flagged cells</th><th>faces found</th></tr>"]
    for i, r in enumerate(rows, 1):
        label = col_labels.get(r["col_id"], r["col_id"])
        label += " (reference)" if r["is_reference"] and "reference" not in label.lower() else ""
        out.append(f'<tr><td class="num">{i}</td><td>{escape(label)}</td><td class="num">{_fmt(r["flexibility"])}</td>'
                   f'<td class="num">{_fmt(r["reach"])}</td><td class="num">{_fmt(r["distinctness"])}</td>'
                   f'<td class="num">{_fmt(r["identity_stability"])}</td><td class="num">{_fmt(r["mean_identity_distance"])}</td>'
                   f'<td class="num">{r["flagged"] or 0}</td><td class="num">{r["faces_found"]}/{r["cells"]}</td></tr>')
    out.append("</table>")
    return "".join(out)


def _expression_table(data: ReportData) -> str:
    row_labels, _ = _labels(data)
    rows = sorted(data.expressions, key=lambda r: -(r["difficulty"] if r["difficulty"] is not None else -1))
    out = ["<table><tr><th>#</th><th>expression</th><th>difficulty</th><th>base model fidelity</th>"
           "<th>characters' fidelity</th><th>verdict</th><th>measured AUs</th><th>not measurable</th></tr>"]
    for i, r in enumerate(rows, 1):
        out.append(f'<tr><td class="num">{i}</td><td>{escape(row_labels.get(r["row_id"], r["row_id"]))}</td>'
                   f'<td class="num">{_fmt(r["difficulty"])}</td><td class="num">{_fmt(r["base_fidelity"])}</td>'
                   f'<td class="num">{_fmt(r["character_fidelity"])}</td><td>{escape(r["verdict"] or "")}</td>'
                   f'<td>{escape(", ".join(json.loads(r["targets_json"] or "[]")))}</td>'
                   f'<td>{escape(", ".join(json.loads(r["unmeasured_json"] or "[]")))}</td></tr>')
    out.append("</table>")
    return "".join(out)


def _rankings(data: ReportData) -> str:
    if not data.rankings:
        return "<p>Nobody has judged this run yet (<code>expressiongrid judge RUN_DIR</code>).</p>"
    out = [f"<p>{data.rankings['answers']} answers by {_count(len(data.rankings['judges']), 'judge')} "
           "(Bradley–Terry scores; higher is better).</p>"]
    if data.agreement and data.agreement.get("kendall_tau") is not None:
        out.append(f"<p>Agreement of measured fidelity with people's expression rankings: Kendall τ "
                   f"{_fmt(data.agreement['kendall_tau'])}, pairwise accuracy "
                   f"{_fmt(data.agreement['pairwise_accuracy'])} over {data.agreement['answers']} answers.</p>")
    for q in data.rankings["questions"]:
        if not q["answers"]:
            continue
        out.append(f"<h3>{escape(q['text'])} — {escape(q['subject'])}</h3><table><tr><th>rank</th><th>cell</th>"
                   "<th>score</th><th>95% interval</th><th>wins / comparisons</th></tr>")
        for item in q["items"]:
            out.append(f'<tr><td class="num">{item["rank"]}</td><td>{escape(str(item["label"]))}</td>'
                       f'<td class="num">{_fmt(item["score"])}</td><td>{_fmt(item["ci95"][0])} … {_fmt(item["ci95"][1])}</td>'
                       f'<td class="num">{item["wins"]:g} / {item["comparisons"]:g}</td></tr>')
        out.append("</table>")
    return "".join(out)


def _grids(data: ReportData) -> str:
    from PIL import Image

    out = []
    for path in data.grids:
        with Image.open(path) as im:
            uri = _data_uri(im, GRID_MAX_SIDE)
        out.append(f'<figure><img class="grid" src="{uri}" alt="{escape(path.name)}">'
                   f"<figcaption>{escape(path.name)}</figcaption></figure>")
    return "".join(out) or "<p>No grid images in this run folder.</p>"


def render_html(data: ReportData) -> str:
    """The whole report as one HTML string."""
    cell_json: dict = {}
    heatmaps = "".join(
        (f"<h3>page {page}</h3>" if len(data.pages) > 1 else "") + _heatmap(data, page, cell_json)
        for page in data.pages)
    row_labels, col_labels = _labels(data)
    charts = ""
    if data.characters:
        chars = [r for r in data.characters if not r["is_reference"]]
        charts += bar_chart("Flexibility and identity stability per character",
                            [(col_labels.get(r["col_id"], r["col_id"]), [r["flexibility"], r["identity_stability"]])
                             for r in chars], ["flexibility", "identity stability"], ["#2b8a3e", "#1c7ed6"])
    if data.expressions:
        charts += bar_chart("Fidelity per expression: base model vs characters",
                            [(row_labels.get(r["row_id"], r["row_id"]), [r["base_fidelity"], r["character_fidelity"]])
                             for r in data.expressions], ["base model (reference)", "characters (mean)"],
                            ["#868e96", "#e8590c"])
    charts += scatter_plot(data)
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in data.notes)
    payload = json.dumps(cell_json, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(data.title)} — expression report</title><style>{_CSS}</style></head><body>
<h1>{escape(data.title)}</h1>
<p>{len(data.rows)} expressions × {len(data.columns)} columns, {sum(1 for c in data.cells if c.status == 'done')}
cells made. Scores are explained in docs/scores.md.</p>{notes}
<h2>Expression × character</h2>
<p>Each cell shows its fidelity (how strongly the expression's target action units appear, relative to the same
character's neutral row; 0–1). Click a cell for its details; ⚑ marks cells where the character stops looking like
itself; dashed cells show no face.</p>
{heatmaps}
<div id="details"><strong id="details-title"></strong> <button id="details-close" type="button">close</button>
<dl id="details-list"></dl></div>
<h2>Characters</h2>{_character_table(data) if data.characters else "<p>No scores yet.</p>"}
<h2>Expressions</h2>{_expression_table(data) if data.expressions else "<p>No scores yet.</p>"}
<h2>Plots</h2>{charts or "<p>No scores yet.</p>"}
<h2>Human judging</h2>{_rankings(data)}
<h2>Grids</h2>{_grids(data)}
<script type="application/json" id="cell-data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""
