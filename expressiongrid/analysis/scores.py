"""Scores from per-cell measurements: fidelity and identity per cell, flexibility and identity stability per
character, difficulty per expression. docs/scores.md gives every formula and its limits.

Pure Python over plain numbers, so scores can be recomputed from the database without the face models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from expressiongrid.analysis.features import (
    AUS,
    MAX_POSE_CHANGE,
    ExpressionFeatures,
    au_activations,
    pose_change,
    target_aus,
)
from expressiongrid.analysis.emotions import emotion_of_expression
from expressiongrid.analysis.identity import IDENTITY_THRESHOLD, identity_distance, identity_flag
from expressiongrid.study.expressions import neutral_row_id

__all__ = ["IDENTITY_THRESHOLD", "CellMeasure", "Scores", "compute_scores", "neutral_row_id"]
# Below this mean fidelity the base model itself does not show the expression.
BASE_REACHES = 0.35
# A character keeps an expression when its mean fidelity is at least this share of the base model's.
KEEPS_SHARE = 0.5
# Denominators never go below this, so a reference column that barely moves cannot inflate ratios.
EPS = 0.05

VERDICT_HARD = "hard even for the base model"
VERDICT_LOST = "easy for the base model but lost with characters"
VERDICT_KEPT = "reached by the base model and kept by characters"
VERDICT_UNMEASURED = "no measurable target AUs"
VERDICT_NO_REFERENCE = "not measured: no face in the reference column's cell"
VERDICT_NO_CHARACTER = "base model only: no character cell of this expression was made"


@dataclass
class CellMeasure:
    """What analysis measured in one cell (input to the scores)."""

    key: str
    page: int
    row_id: str
    col_id: str
    is_reference: bool
    face_found: bool
    features: dict | None = None
    embedding: list[float] | None = None
    sample: int = 0  # which of several seeds per cell; rows are compared within one page and sample
    error: str | None = None  # the image could not be read (counted like a cell without a face)
    emotions: dict[str, float] | None = None  # the emotion classifier's probabilities, when it ran

    @property
    def slot(self) -> tuple[int, int]:
        return (self.page, self.sample)


@dataclass
class CellScore:
    key: str
    row_id: str
    col_id: str
    face_found: bool
    aus: dict[str, float] | None = None          # AU intensities vs the same column's neutral cell
    fidelity: float | None = None                 # mean intensity of the row's measurable target AUs
    reference_fidelity: float | None = None       # the same in the reference column of this row
    fidelity_vs_reference: float | None = None    # fidelity - reference_fidelity
    identity_to_neutral: float | None = None      # 128-d distance to the same character's neutral cell
    identity_to_others: float | None = None       # smallest distance to another character's neutral cell
    identity_flag: str | None = None              # why the character stops looking like itself, if it does
    pose_flag: bool = False                       # head pose too far from the neutral cell: not scored
    emotion: str | None = None                    # the classifier emotion the row names (happy, sad, ...)
    emotion_score: float | None = None            # the classifier's probability of that emotion here
    emotions: dict[str, float] | None = None      # all its probabilities
    note: str | None = None


@dataclass
class CharacterScore:
    col_id: str
    is_reference: bool
    reach: float | None = None
    distinctness: float | None = None
    flexibility: float | None = None
    identity_stability: float | None = None
    mean_identity_distance: float | None = None
    faces_found: int = 0
    cells: int = 0
    flagged: int = 0
    no_face: int = 0        # cells without a detectable face (or unreadable), counted, never dropped
    pose_flagged: int = 0   # cells not scored because the head turned too far from the neutral cell


@dataclass
class ExpressionScore:
    row_id: str
    targets: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    base_fidelity: float | None = None
    character_fidelity: float | None = None
    difficulty: float | None = None
    loss: float | None = None
    no_face: int = 0        # cells of this row without a detectable face (character columns count them as 0)
    verdict: str = VERDICT_UNMEASURED


@dataclass
class Scores:
    cells: dict[str, CellScore]
    characters: dict[str, CharacterScore]
    expressions: dict[str, ExpressionScore]
    neutral_row: str
    reference_column: str | None

    def as_dict(self) -> dict:
        return {
            "neutral_row": self.neutral_row,
            "reference_column": self.reference_column,
            "cells": {k: asdict(v) for k, v in self.cells.items()},
            "characters": {k: asdict(v) for k, v in self.characters.items()},
            "expressions": {k: asdict(v) for k, v in self.expressions.items()},
        }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _dist(a, b) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def compute_scores(measures: list[CellMeasure], rows: list[dict]) -> Scores:
    """All scores of one run. ``rows`` are the study's rows (``id``, ``action_units``) in grid order."""
    neutral = neutral_row_id(rows) if rows else ""
    targets = {r["id"]: target_aus(r.get("action_units") or []) for r in rows}
    row_emotion = {r["id"]: emotion_of_expression(r["id"], r.get("label", "")) for r in rows}
    by_pos = {(m.slot, m.row_id, m.col_id): m for m in measures}
    ref_cols = {m.col_id for m in measures if m.is_reference}
    reference = sorted(ref_cols)[0] if ref_cols else None

    def feats(m):
        return ExpressionFeatures.from_dict(m.features) if m is not None and m.face_found and m.features else None

    cells: dict[str, CellScore] = {}
    for m in measures:
        cs = CellScore(key=m.key, row_id=m.row_id, col_id=m.col_id, face_found=m.face_found)
        cells[m.key] = cs
        if not m.face_found:
            cs.note = m.error or "no face found"
            continue
        cs.emotions = m.emotions
        cs.emotion = row_emotion.get(m.row_id)
        if m.emotions and cs.emotion:
            cs.emotion_score = m.emotions.get(cs.emotion)
        base = by_pos.get((m.slot, neutral, m.col_id))
        f_now, f_rest = feats(m), feats(base)
        measured = targets.get(m.row_id, ([], []))[0]
        if f_rest is None:
            cs.note = "no face in this column's neutral cell: expression and identity not measured"
        elif pose_change(f_now, f_rest) > MAX_POSE_CHANGE:
            cs.pose_flag = True
            cs.note = (f"head turned {pose_change(f_now, f_rest):.0f} degrees from this column's neutral cell "
                       f"(more than {MAX_POSE_CHANGE:.0f}): expression not scored")
        else:
            cs.aus = {k: round(v, 4) for k, v in au_activations(f_now, f_rest).items()}
            if m.row_id != neutral and measured:
                cs.fidelity = _mean(cs.aus[a] for a in measured)
        if m.embedding and base is not None and base.embedding and m.row_id != neutral:
            cs.identity_to_neutral = identity_distance(m.embedding, base.embedding)
        others = [by_pos.get((m.slot, neutral, c)) for c in {x.col_id for x in measures}
                  if c != m.col_id and c not in ref_cols]
        others = [o for o in others if o is not None and o.embedding]
        if m.embedding and others and not m.is_reference:
            cs.identity_to_others = min(identity_distance(m.embedding, o.embedding) for o in others)
        if not m.is_reference:
            cs.identity_flag = identity_flag(cs.identity_to_neutral, cs.identity_to_others)

    # Fidelity against the reference column of the same row (and page).
    for m in measures:
        cs = cells[m.key]
        ref = by_pos.get((m.slot, m.row_id, reference)) if reference else None
        if ref is not None and cells[ref.key].fidelity is not None:
            cs.reference_fidelity = cells[ref.key].fidelity
            if cs.fidelity is not None:
                cs.fidelity_vs_reference = cs.fidelity - cs.reference_fidelity

    characters = {c: _character_score(c, c in ref_cols, [m for m in measures if m.col_id == c], cells,
                                      neutral, targets, reference, by_pos)
                  for c in dict.fromkeys(m.col_id for m in measures)}
    expressions = {r["id"]: _expression_score(r["id"], targets[r["id"]], measures, cells, ref_cols)
                   for r in rows if r["id"] != neutral}
    return Scores(cells, characters, expressions, neutral, reference)


def _fid_or_zero(cs: CellScore | None) -> float | None:
    """A cell's fidelity for sums: a missing face counts as not reaching the expression."""
    if cs is None:
        return None
    if not cs.face_found:
        return 0.0
    return cs.fidelity


def _character_score(col_id, is_reference, own, cells, neutral, targets, reference, by_pos) -> CharacterScore:
    sc = CharacterScore(col_id=col_id, is_reference=is_reference, cells=len(own),
                        faces_found=sum(1 for m in own if m.face_found))
    got = want = 0.0
    for m in own:
        if m.row_id == neutral or not targets.get(m.row_id, ([], []))[0]:
            continue
        ref = by_pos.get((m.slot, m.row_id, reference)) if reference else None
        mine, base = _fid_or_zero(cells[m.key]), _fid_or_zero(cells[ref.key]) if ref is not None else None
        if mine is None or base is None or (ref is not None and not cells[ref.key].face_found):
            continue  # nothing to compare with: the reference has no face in this row
        got += mine
        want += base
    if want > 0 or got > 0:
        sc.reach = min(1.0, got / max(want, EPS))
    sc.distinctness = _distinctness(own, cells, reference, by_pos)
    if sc.reach is not None and sc.distinctness is not None:
        sc.flexibility = math.sqrt(sc.reach * sc.distinctness)
    elif sc.reach == 0.0:
        sc.flexibility = 0.0  # no expression reached at all (e.g. no face in any cell): nothing to be distinct
    sc.no_face = sum(1 for m in own if not m.face_found)
    sc.pose_flagged = sum(1 for m in own if cells[m.key].pose_flag)
    dists = [cells[m.key].identity_to_neutral for m in own if cells[m.key].identity_to_neutral is not None]
    if dists and not is_reference:
        sc.flagged = sum(1 for m in own if cells[m.key].identity_flag)
        sc.mean_identity_distance = sum(dists) / len(dists)
        # Every non-neutral cell is in the denominator: a cell where the face is lost did not keep it.
        expressive = [m for m in own if m.row_id != neutral]
        kept = sum(1 for m in expressive if cells[m.key].identity_to_neutral is not None
                   and not cells[m.key].identity_flag)
        sc.identity_stability = kept / len(expressive)
    return sc


def _au_vector(cs: CellScore | None):
    if cs is None or cs.aus is None:
        return None
    return [cs.aus[a] for a in AUS if a in cs.aus]


def _spread(vectors) -> float | None:
    vectors = [v for v in vectors if v is not None]
    if len(vectors) < 2:
        return None
    pairs = [(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1:]]
    return sum(_dist(a, b) for a, b in pairs) / len(pairs)


def _distinctness(own, cells, reference, by_pos) -> float | None:
    """Mean pairwise distance between the column's rows in AU space, as a share of the reference column's.

    Rows are compared within one page and sample (one grid's column); the spreads are averaged over them.
    """
    if reference is None:
        return None
    mine, ref = [], []
    for slot in dict.fromkeys(m.slot for m in own):
        col = [m for m in own if m.slot == slot]
        mine.append(_spread(_au_vector(cells[m.key]) for m in col))
        ref.append(_spread(_au_vector(cells[by_pos[(slot, m.row_id, reference)].key])
                           for m in col if (slot, m.row_id, reference) in by_pos))
    mine_mean, ref_mean = _mean(mine), _mean(ref)
    if mine_mean is None or ref_mean is None:
        return None
    return min(1.0, mine_mean / max(ref_mean, EPS))


def _expression_score(row_id, target, measures, cells, ref_cols) -> ExpressionScore:
    measured, unmeasured = target
    es = ExpressionScore(row_id=row_id, targets=measured, unmeasured=unmeasured)
    row = [m for m in measures if m.row_id == row_id]
    es.no_face = sum(1 for m in row if not m.face_found)
    if not measured:
        return es
    es.base_fidelity = _mean(cells[m.key].fidelity for m in row if m.is_reference)
    if es.base_fidelity is None:
        # Without a measured reference there is no "easy or hard for the base model"; characters' own
        # measured cells are still summarised.
        es.character_fidelity = _mean(cells[m.key].fidelity for m in row if not m.is_reference)
        if es.character_fidelity is not None:
            es.difficulty = 1.0 - es.character_fidelity
        es.verdict = VERDICT_NO_REFERENCE
        return es
    # A character cell with no face did not show the expression the base model could show: it counts as 0.
    es.character_fidelity = _mean(_fid_or_zero(cells[m.key]) for m in row if not m.is_reference)
    if es.character_fidelity is not None:
        es.difficulty = 1.0 - es.character_fidelity
    if es.character_fidelity is not None:
        es.loss = es.base_fidelity - es.character_fidelity
    if es.character_fidelity is None:
        es.verdict = VERDICT_NO_CHARACTER if es.base_fidelity >= BASE_REACHES else VERDICT_HARD
    elif es.base_fidelity < BASE_REACHES:
        es.verdict = VERDICT_HARD
    elif es.character_fidelity is not None and es.character_fidelity < KEEPS_SHARE * es.base_fidelity:
        es.verdict = VERDICT_LOST
    else:
        es.verdict = VERDICT_KEPT
    return es
