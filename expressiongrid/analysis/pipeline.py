"""``analyze_run``: measure every finished cell of a run folder and store measures and scores in its database."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from expressiongrid.errors import CharacterError, StoreError

# dlib's detector is slow on big images and gains nothing above this size for a closeup.
DETECT_MAX_SIDE = 512


@dataclass
class AnalysisSummary:
    """What one ``analyze_run`` call did."""

    run_dir: str
    cells: int
    measured: int
    skipped: int
    no_face: int
    unreadable: int
    clip_scored: int
    notes: list[str] = field(default_factory=list)


def study_rows(info: dict) -> list[dict]:
    """The study's rows (``id``, ``label``, ``action_units``) whatever shape ``study_info`` stored them in."""
    rows = info.get("rows") or []
    if isinstance(rows, dict):
        rows = rows.get("values") or []
    return [r for r in rows if isinstance(r, dict) and "id" in r]


def baseline_notes(rows: list[dict]) -> list[str]:
    """What a user must know about the row every other row is read against (``neutral_row_id``), when the
    study does not make it plain: a single row, or no row named neutral (the first row is used)."""
    from expressiongrid.study.expressions import neutral_row_id

    if not rows:
        return []
    neutral = next(r for r in rows if r["id"] == neutral_row_id(rows))
    label = str(neutral.get("label") or neutral["id"])
    if len(rows) == 1:
        return [f"the study has one row ({label!r}), which is read as the neutral row: expression scores need a "
                "neutral row and at least one expression row"]
    if "neutral" not in f"{neutral['id']} {label}".lower():
        return [f"no row is named neutral, so every row is read against the first row, {label!r}: its cells get "
                "no scores, and the others' are changes from it; add a neutral row to measure every expression"]
    return []


def study_columns(info: dict) -> list[dict]:
    cols = info.get("columns") or []
    if isinstance(cols, dict):
        cols = cols.get("values") or []
    return [c for c in cols if isinstance(c, dict) and "id" in c]


def reference_columns(info: dict) -> set[str]:
    """Column ids that show the base model without a character."""
    return {c["id"] for c in study_columns(info) if c.get("reference") or c["id"] == "reference"} or {"reference"}


def _detect(image, with_embedding=True):
    """``analyze_face`` on a copy at most ``DETECT_MAX_SIDE`` a side; landmarks and box in ``image``'s pixels."""
    from expressiongrid.analysis import faces

    scale = min(1.0, DETECT_MAX_SIDE / max(image.size))
    small = image if scale >= 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    face = faces.analyze_face(small, with_embedding=with_embedding)
    if face.found:
        face.landmarks = [(x / scale, y / scale) for x, y in face.landmarks]
        if face.box:
            face.box = tuple(round(v / scale) for v in face.box)
    return face


def detect_landmarks(image):
    """The 68 landmarks of the most confident face in a PIL image, or ``None`` when there is no face."""
    face = _detect(image, with_embedding=False)
    return face.landmarks if face.found else None


def measure_image(image):
    """(FaceResult, ExpressionFeatures | None, entropy, noise) of one PIL image; landmarks in its own pixels."""
    from expressiongrid.analysis import quality
    from expressiongrid.analysis.features import features_from_landmarks

    face = _detect(image)
    features = features_from_landmarks(face.landmarks) if face.found else None
    return face, features, quality.entropy(image), quality.noise_sigma(image)


def _file_sha256(path) -> str | None:
    """SHA-256 of a cell image (None when it cannot be read: it is then measured, and recorded as unreadable)."""
    from expressiongrid.characters.hashes import file_sha256

    try:
        return file_sha256(path)
    except CharacterError:
        return None


def _cell_measure(cell, row, is_reference: bool):
    """A stored ``analysis_cells`` row as the input of ``compute_scores``."""
    from expressiongrid.analysis.scores import CellMeasure

    return CellMeasure(
        key=cell.key, page=cell.page, sample=int((cell.spec or {}).get("sample") or 0), row_id=cell.row_id,
        col_id=cell.col_id, is_reference=is_reference, face_found=bool(row["face_found"]),
        features=json.loads(row["features_json"]) if row["features_json"] else None,
        embedding=json.loads(row["embedding_json"]) if row["embedding_json"] else None, error=row["error"],
        emotions=json.loads(row["emotions_json"]) if row["emotions_json"] else None,
    )


def analyze_run(run_dir: str | os.PathLike, *, clip_model: str | os.PathLike | None = None,
                aesthetic_head: str | os.PathLike | None = None,
                progress: Callable[[int, int], None] | None = None) -> AnalysisSummary:
    """Measure every finished cell of the run in ``run_dir`` not measured yet, then recompute all scores.

    ``progress(done, total)`` is called after each cell measured. Cells already in ``analysis_cells`` with
    the same image content (SHA-256) and analyzer version are skipped, whatever their file is called; with a CLIP model, cells without a CLIP score get one.
    Raises ``AnalysisError`` (with the install hint) when the ``analysis`` extra is missing.
    """
    from expressiongrid.analysis import emotions, faces, runstore
    from expressiongrid.analysis.images import open_rgb
    from expressiongrid.analysis.quality import CLIP_NOTE, ClipScorer
    from expressiongrid.analysis.scores import compute_scores
    from expressiongrid.store import Store

    faces.check_available()
    if aesthetic_head is not None and clip_model is None:
        from expressiongrid.errors import UsageError

        raise UsageError("--aesthetic-head needs --clip-model (the head reads that model's image embedding)")
    scorer = ClipScorer.load(clip_model, aesthetic_head) if clip_model is not None else None
    with_emotions = emotions.available()
    with Store.open_existing(run_dir) as store:
        conn = store.connection
        info = store.study_info()
        cells = store.cells("done")
        known = runstore.analysed(conn)
        digests = {c.key: _file_sha256(store.run_dir / c.file) for c in cells}
        todo = [c for c in cells if c.key not in known or digests[c.key] is None
                or known[c.key]["content_sha256"] != digests[c.key]]
        for c in cells:
            if c not in todo and known[c.key]["file"] != c.file:
                runstore.update_file(conn, c.key, c.file)  # same image under a new name: nothing to measure
        if scorer is not None:
            todo += [c for c in cells if c.key in known and c not in todo and known[c.key]["clip_score"] is None]
        summary = AnalysisSummary(str(store.run_dir), len(cells), 0, len(cells) - len(todo), 0, 0, 0)
        for i, cell in enumerate(todo, 1):
            path = store.run_dir / cell.file
            try:
                image = open_rgb(path)
            except (OSError, ValueError) as exc:
                runstore.save_cell(conn, cell.key, cell.file, None, None, None, None, error=f"unreadable: {exc}",
                                   content_sha256=digests[cell.key])
                summary.unreadable += 1
            else:
                clip = aesthetic = None
                if scorer is not None:
                    clip, aesthetic = scorer.score(image, cell.prompt)
                    summary.clip_scored += 1
                if cell.key in known and known[cell.key]["content_sha256"] == digests[cell.key]:
                    runstore.save_clip(conn, cell.key, clip, aesthetic)
                else:
                    face, features, ent, noise = measure_image(image)
                    feelings = emotions.classify(image, face.box) if face.found and with_emotions else None
                    runstore.save_cell(conn, cell.key, cell.file, face, features, ent, noise, clip, aesthetic,
                                       content_sha256=digests[cell.key], emotions=feelings)
                    summary.measured += 1
            if progress is not None:
                progress(i, len(todo))

        rows = runstore.analysed(conn)
        refs = reference_columns(info)
        measures = [_cell_measure(c, rows[c.key], c.col_id in refs) for c in cells if c.key in rows]
        if not measures and cells:
            raise StoreError(f"{store.run_dir}: no cell could be measured")
        summary.no_face = sum(1 for m in measures if not m.face_found)
        has_clip = any(r["clip_score"] is not None for r in rows.values())
        if not has_clip:
            summary.notes.append(CLIP_NOTE)
        if not with_emotions:
            summary.notes.append(f"emotion classifier not installed, so no emotion probabilities: {emotions.INSTALL_HINT}")
        if summary.no_face:
            summary.notes.append(f"{summary.no_face} of {len(measures)} cells show no detectable face")
        if not cells:
            summary.notes.append(f"no finished cells to measure yet (0 of {sum(store.counts().values())} made): "
                                 "run the study, then analyse it")
        summary.notes += baseline_notes(study_rows(info))
        scores = compute_scores(measures, study_rows(info))
        runstore.save_scores(conn, scores, {"notes": summary.notes, "clip_model": str(clip_model) if clip_model
                                            else None, "aesthetic_head": str(aesthetic_head) if aesthetic_head
                                            else None})
    return summary
