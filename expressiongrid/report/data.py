"""Everything a report shows, read from the run's database into plain data (no HTML here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.analysis.pipeline import reference_columns, study_columns, study_rows
from expressiongrid.output.infotext import axis_type_name
from expressiongrid.output.metadata import CellMetadata
from expressiongrid.text import count_noun, isolate


@dataclass
class ReportCell:
    """One grid cell with what analysis measured and scored (``None`` where nothing was measured)."""

    key: str
    page: int
    row_id: str
    row_label: str
    col_id: str
    col_label: str
    status: str
    file: str | None
    prompt: str
    seed: int
    parameters: str | None
    error: str | None
    measured: bool = False
    face_found: bool | None = None
    entropy: float | None = None
    noise: float | None = None
    clip_score: float | None = None
    aesthetic: float | None = None
    fidelity: float | None = None
    reference_fidelity: float | None = None
    identity_to_neutral: float | None = None
    identity_to_others: float | None = None
    identity_flag: str | None = None
    aus: dict | None = None
    note: str | None = None
    emotions: dict | None = None          # the emotion classifier's probabilities
    emotion: str | None = None            # the emotion the row names
    emotion_score: float | None = None    # its probability here

    def title(self, between: str = " × ") -> str:
        """The cell's name where the report and the viewer show it: its row's and its column's labels, each
        isolated (``text.isolate``) so a label's direction controls cannot reorder the other."""
        return f"{isolate(self.row_label)}{between}{isolate(self.col_label)}"


@dataclass
class ReportData:
    title: str
    run_dir: Path
    rows: list[tuple[str, str]]                 # (id, label) in grid order
    columns: list[tuple[str, str]]
    reference: set[str]
    row_targets: dict[str, list]                # row id -> its target AU codes as the set gives them
    cells: list[ReportCell]
    characters: list[dict]                      # analysis_character_scores rows
    expressions: list[dict]                     # analysis_expression_scores rows
    notes: list[str] = field(default_factory=list)
    analysed: bool = False
    grids: list[Path] = field(default_factory=list)
    column_attributes: dict[str, dict] = field(default_factory=dict)  # col id -> kind and [tags] of its character
    rankings: dict | None = None                # judge.rankings_for_store when people have judged
    agreement: dict | None = None
    row_kind: str = "expressions"               # the axes' kinds as the study stored them
    col_kind: str = "characters"
    _by_position: dict | None = field(default=None, init=False, repr=False, compare=False)
    _indexed: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def usual_axes(self) -> bool:
        """Expressions down, characters across: the study the report's scores are made for."""
        return (self.row_kind, self.col_kind) == ("expressions", "characters")

    @property
    def axis_names(self) -> tuple[str, str]:
        """How the report names the rows' and the columns' axis: ``expression``/``character`` for the usual
        study, else the axis type names the grid uses (``Steps``, ``CFG Scale``)."""
        if self.usual_axes:
            return "expression", "character"
        return axis_type_name(self.row_kind), axis_type_name(self.col_kind)

    @property
    def axes_title(self) -> str:
        """``Expression × character``; ``CFG Scale × Steps`` for other axes."""
        rows, cols = self.axis_names
        return f"{rows[:1].upper()}{rows[1:]} × {cols}"

    @property
    def size(self) -> str:
        """``3 expressions × 4 columns``; ``3 CFG Scale values × 2 Steps values`` for other axes."""
        if self.usual_axes:
            return f"{count_noun(len(self.rows), 'expression')} × {count_noun(len(self.columns), 'column')}"
        rows, cols = self.axis_names
        return f"{count_noun(len(self.rows), rows + ' value')} × {count_noun(len(self.columns), cols + ' value')}"

    def cell_at(self, row_id: str, col_id: str, page: int = 0) -> ReportCell | None:
        """The cell at that position (the first, if several share it), from an index of `cells` made at the
        first call: the heatmap asks once per position, which a scan of every cell made quadratic."""
        if self._by_position is None or self._indexed != len(self.cells):
            self._by_position = {}
            for c in self.cells:
                self._by_position.setdefault((c.row_id, c.col_id, c.page), c)
            self._indexed = len(self.cells)
        return self._by_position.get((row_id, col_id, page))

    @property
    def pages(self) -> list[int]:
        return sorted({c.page for c in self.cells}) or [0]


def _table(conn, sql: str) -> list[dict]:
    import sqlite3

    try:
        return [dict(r) for r in conn.execute(sql).fetchall()]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # nobody has analysed this run yet
        raise


def _current_grids(store) -> tuple[list[Path], list[str]]:
    """The grid PNGs in ``grids/`` that the latest finished run wrote, and the names of the other PNGs there
    (left over from a run of an earlier version of the study: another name, other pages). When that run
    recorded no grids (interrupted before composing; a launch, whose last shard composes outside the
    runner) every PNG there counts, as nothing says which are current."""
    folder = Path(store.run_dir) / "grids"
    present = sorted(folder.glob("*.png")) if folder.is_dir() else []
    latest = next((r for r in reversed(store.runs()) if r.summary), None)
    written = latest.summary.get("grids") if latest is not None else None
    if not written:
        return present, []
    names = {Path(g).name for g in written}
    return [p for p in present if p.name in names], [p.name for p in present if p.name not in names]


def stored_axis_kind(info: dict, key: str) -> str | None:
    """The kind of the study's ``rows``/``columns``/``pages`` axis as the store holds it; None for a run
    from an older version, which stored bare value lists."""
    spec = info.get(key)
    kind = spec.get("kind") if isinstance(spec, dict) else None
    return str(kind) if kind else None


def load_report_data(store) -> ReportData:
    """Read cells, measures, scores and human rankings of an open ``Store``."""
    from expressiongrid.analysis import runstore

    conn = store.connection
    info = store.study_info()
    records = store.cells()
    rows = [(r["id"], str(r.get("label", r["id"]))) for r in study_rows(info)]
    cols = [(c["id"], str(c.get("label", c["id"]))) for c in study_columns(info)]
    # Fall back to what the cells say when the stored study does not list rows or columns.
    if not rows:
        rows = list(dict.fromkeys((c.row_id, c.row_label) for c in sorted(records, key=lambda c: c.row_index)))
    if not cols:
        cols = list(dict.fromkeys((c.col_id, c.col_label) for c in sorted(records, key=lambda c: c.col_index)))
    measures = {r["key"]: r for r in _table(conn, "SELECT * FROM analysis_cells")}
    scores = {r["key"]: r for r in _table(conn, "SELECT * FROM analysis_cell_scores")}
    cells = []
    for rec in records:
        # The prompt as the cell's image states it (an embedding under its file stem, as A1111 names it),
        # not as it was encoded; cells from before metadata was stored as data keep the store's prompt.
        prompt = CellMetadata.from_dict(rec.metadata).prompt if rec.metadata else rec.prompt
        cell = ReportCell(key=rec.key, page=rec.page, row_id=rec.row_id, row_label=rec.row_label,
                          col_id=rec.col_id, col_label=rec.col_label, status=rec.status, file=rec.file,
                          prompt=prompt, seed=rec.seed, parameters=rec.parameters, error=rec.error)
        m = measures.get(rec.key)
        if m is not None and rec.status == "done":
            cell.measured = True
            cell.face_found = bool(m["face_found"])
            cell.entropy, cell.noise = m["entropy"], m["noise"]
            cell.clip_score, cell.aesthetic = m["clip_score"], m["aesthetic"]
            cell.emotions = json.loads(m["emotions_json"]) if m["emotions_json"] else None
        s = scores.get(rec.key)
        if s is not None:
            cell.fidelity, cell.reference_fidelity = s["fidelity"], s["reference_fidelity"]
            cell.identity_to_neutral, cell.identity_to_others = s["identity_to_neutral"], s["identity_to_others"]
            cell.identity_flag, cell.note = s["identity_flag"], s["note"]
            cell.aus = json.loads(s["aus_json"]) if s["aus_json"] else None
            cell.emotion, cell.emotion_score = s["emotion"], s["emotion_score"]
        cells.append(cell)
    data = ReportData(
        title=str(info.get("name") or store.run_dir.name),
        run_dir=Path(store.run_dir),
        rows=rows,
        columns=cols,
        reference=reference_columns(info),
        row_targets={r["id"]: list(r.get("action_units") or []) for r in study_rows(info)},
        cells=cells,
        characters=_table(conn, "SELECT * FROM analysis_character_scores"),
        expressions=_table(conn, "SELECT * FROM analysis_expression_scores"),
        analysed=bool(measures),
        row_kind=stored_axis_kind(info, "rows") or "expressions",
        col_kind=stored_axis_kind(info, "columns") or "characters",
    )
    data.grids, stale = _current_grids(store)
    if stale:
        data.notes.append(f"{count_noun(len(stale), 'older grid')} in grids/ left out (not written by the latest "
                          f"run, e.g. before the study was renamed or re-laid out): {', '.join(stale)}")
    data.column_attributes = {c["id"]: {"kind": c["kind"], **(c.get("tags") or {})}
                              for c in study_columns(info) if c.get("kind")}
    # `analyze` on a run with no finished cell measures nothing but leaves its notes (why) to show.
    ran = data.analysed or bool(_table(conn, "SELECT name FROM analysis_meta LIMIT 1"))
    meta = runstore.load_meta(conn) if ran else {}
    data.notes = list(meta.get("notes", [])) + data.notes
    if not ran:
        data.notes.append("this run has not been analysed yet: run `expressiongrid analyze RUN_DIR` for scores")
    _add_rankings(store, data)
    return data


def _add_rankings(store, data: ReportData) -> None:
    """Human Bradley–Terry rankings, and how fidelity agrees with them, when anyone has judged the run."""
    from expressiongrid.judge.rankings import agreement_with_scores, rankings_for_store

    has_table = store.connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'judgements'").fetchone()
    if not has_table:
        return  # nobody ever opened the judging app on this run
    rankings = rankings_for_store(store)
    if not rankings.get("answers"):
        return
    data.rankings = rankings
    fidelity = {c.key: c.fidelity for c in data.cells if c.fidelity is not None}
    if fidelity:
        data.agreement = agreement_with_scores(store, fidelity, kind="expression")
