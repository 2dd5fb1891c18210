"""`expressiongrid analyze` on a run whose cells are real face photos and warps, and the scores it stores.

Columns of the run (rows: neutral, mouth open, eyes shut, mouth corners down):
- reference: the astronaut photo and its warps (the base model doing every expression);
- hopper: Grace Hopper and her warps (a flexible character);
- stiff: Grace Hopper's neutral photo in every row (the seed's "neutral burns through");
- swap: Grace Hopper's neutral, then the astronaut's warps (expressions reached, likeness lost);
- noface: noise in every cell (the tiny model's kind of output).
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from PIL import Image

from expressiongrid.store.schema import RUN_MIGRATIONS
from expressiongrid.analysis import validation
from expressiongrid.analysis.scores import (
    IDENTITY_THRESHOLD,
    VERDICT_HARD,
    VERDICT_KEPT,
    VERDICT_LOST,
    CellMeasure,
    compute_scores,
)
from expressiongrid.cli import main
from expressiongrid.store import Store
from helpers import face_columns

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faces") / "run"
    validation.build_validation_run(run_dir, face_columns()).close()
    result = CliRunner().invoke(main, ["analyze", str(run_dir)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output
    return run_dir, result.output


def _rows(run_dir, sql):
    conn = sqlite3.connect(run_dir / "run.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def _cell_scores(run_dir):
    rows = _rows(run_dir, "SELECT c.row_id, c.col_id, s.* FROM analysis_cell_scores s JOIN cells c USING (key)")
    return {(r["row_id"], r["col_id"]): r for r in rows}


def test_analyze_stores_a_measurement_for_every_cell_no_face_included(analysed_run):
    run_dir, output = analysed_run
    assert "measured 20, skipped 0" in output and "4 without a face" in output
    assert "no CLIP model given" in output  # the CLIP scores are skipped with a clear note
    rows = _rows(run_dir, "SELECT c.col_id, a.* FROM analysis_cells a JOIN cells c USING (key)")
    assert len(rows) == 20
    for r in rows:
        assert r["entropy"] > 0 and r["noise"] is not None and r["clip_score"] is None
        if r["col_id"] == "noface":
            assert r["face_found"] == 0 and r["landmarks_json"] is None and r["embedding_json"] is None
        else:
            assert r["face_found"] == 1
            assert len(json.loads(r["landmarks_json"])) == 68 and len(json.loads(r["embedding_json"])) == 128
            assert set(json.loads(r["features_json"])) >= {"mouth_open", "lip_corner_lift", "brow_gap"}
    versions = _rows(run_dir, "SELECT version FROM schema_versions WHERE component = 'analysis'")
    assert versions == [{"version": len(RUN_MIGRATIONS["analysis"])}]


def test_rerun_skips_analysed_cells_and_measures_a_redone_cell(analysed_run, tmp_path):
    run_dir, _ = analysed_run
    before = _rows(run_dir, "SELECT key, analysed_at FROM analysis_cells")
    runner = CliRunner()
    result = runner.invoke(main, ["analyze", str(run_dir)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0 and "measured 0, skipped 20" in result.output
    assert _rows(run_dir, "SELECT key, analysed_at FROM analysis_cells") == before
    # The same image under a new file name is not measured again; its new name is recorded.
    with Store.open_existing(run_dir) as store:
        cell = next(c for c in store.cells() if c.row_id == "sad" and c.col_id == "stiff")
        new_rel = cell.file.replace(".png", "-again.png")
        (run_dir / new_rel).write_bytes((run_dir / cell.file).read_bytes())
        store.mark_done(cell.key, file=new_rel, parameters=cell.parameters, seconds=0.1, run_id=cell.run_id)
    result = runner.invoke(main, ["analyze", str(run_dir)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert "measured 0, skipped 20" in result.output
    [row] = _rows(run_dir, f"SELECT file FROM analysis_cells WHERE key = '{cell.key}'")
    assert row["file"] == new_rel
    # A cell image replaced in place (same path, new content) is measured again; the others stay skipped.
    with Image.open(run_dir / new_rel) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(run_dir / new_rel)
    result = runner.invoke(main, ["analyze", str(run_dir)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert "measured 1, skipped 19" in result.output
    # Put the cell back as it was (the run is shared with the other tests of this module).
    with Image.open(run_dir / new_rel) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(run_dir / new_rel)
    assert "measured 1, skipped 19" in runner.invoke(main, ["analyze", str(run_dir)],
                                                      env={"EXPRESSIONGRID_NO_PROGRESS": "1"}).output


def test_fidelity_reads_each_row_against_its_own_neutral_and_the_reference(analysed_run):
    run_dir, _ = analysed_run
    s = _cell_scores(run_dir)
    assert s[("neutral", "hopper")]["fidelity"] is None  # the baseline row has no target
    for row in ("open", "sad"):
        assert s[(row, "reference")]["fidelity"] > 0.45
        assert s[(row, "hopper")]["fidelity"] > 0.45
        assert s[(row, "hopper")]["reference_fidelity"] == s[(row, "reference")]["fidelity"]
        assert s[(row, "stiff")]["fidelity"] == 0.0  # neutral burned through: nothing moved
        assert s[(row, "stiff")]["fidelity_vs_reference"] < -0.45
    assert s[("sleepy", "reference")]["fidelity"] > 0.5
    assert s[("open", "noface")]["fidelity"] is None and s[("open", "noface")]["note"] == "no face found"
    aus = json.loads(s[("open", "hopper")]["aus_json"])
    assert aus["AU25"] > 0.9 and aus["AU15"] < 0.3


def test_identity_flags_cells_that_stop_looking_like_the_character(analysed_run):
    run_dir, _ = analysed_run
    s = _cell_scores(run_dir)
    for row in ("open", "sleepy", "sad"):
        assert s[(row, "hopper")]["identity_to_neutral"] < IDENTITY_THRESHOLD
        assert s[(row, "hopper")]["identity_flag"] is None
        assert s[(row, "swap")]["identity_to_neutral"] > IDENTITY_THRESHOLD
        assert "from its own neutral face" in s[(row, "swap")]["identity_flag"]
        assert s[(row, "stiff")]["identity_to_neutral"] == pytest.approx(0.0, abs=1e-6)
    assert s[("open", "hopper")]["identity_to_others"] is not None


def test_character_scores_rank_flexible_above_stiff_and_stable_above_swapped(analysed_run):
    run_dir, _ = analysed_run
    c = {r["col_id"]: r for r in _rows(run_dir, "SELECT * FROM analysis_character_scores")}
    assert c["reference"]["flexibility"] == pytest.approx(1.0)
    assert c["hopper"]["flexibility"] > 0.6
    assert c["stiff"]["flexibility"] == 0.0 and c["stiff"]["distinctness"] == 0.0
    assert c["noface"]["flexibility"] == 0.0 and c["noface"]["faces_found"] == 0
    assert c["hopper"]["identity_stability"] == 1.0 and c["swap"]["identity_stability"] == 0.0
    assert c["swap"]["flagged"] == 3 and c["swap"]["mean_identity_distance"] > IDENTITY_THRESHOLD
    assert c["reference"]["identity_stability"] is None  # the base model has no identity to keep


def test_expression_difficulty_uses_the_base_model_and_the_characters(analysed_run):
    run_dir, _ = analysed_run
    e = {r["row_id"]: r for r in _rows(run_dir, "SELECT * FROM analysis_expression_scores")}
    assert set(e) == {"open", "sleepy", "sad"}
    assert json.loads(e["open"]["targets_json"]) == ["AU25", "AU26"]
    for r in e.values():
        assert r["base_fidelity"] > 0.5
        assert r["difficulty"] == pytest.approx(1 - r["character_fidelity"])
    # Corners pulled down: base model 1.0, only hopper of four characters shows it.
    assert e["sad"]["verdict"] == VERDICT_LOST and e["sad"]["character_fidelity"] < 0.5


def _m(key, row, col, feats, ref=False, emb=None):
    return CellMeasure(key=key, page=0, row_id=row, col_id=col, is_reference=ref, face_found=feats is not None,
                       features=feats, embedding=emb)


NEUTRAL = dict(mouth_open=0.05, jaw_drop=0.9, lip_corner_lift=0.02, mouth_width=0.85, upper_lid=0.25,
               lower_lid=0.1, brow_raise_inner=0.3, brow_raise_outer=0.25, brow_gap=0.5)


def _with(**changes):
    return {**NEUTRAL, **changes}


def test_difficulty_separates_hard_for_the_base_model_from_lost_with_characters():
    rows = [{"id": "neutral", "action_units": []}, {"id": "smile", "action_units": [12]},
            {"id": "gasp", "action_units": [25]}, {"id": "shut", "action_units": [43]}]
    smile, gasp, shut = _with(lip_corner_lift=0.2), _with(mouth_open=0.25), _with(upper_lid=0.0)
    measures = []
    for col, ref in (("reference", True), ("a", False), ("b", False)):
        measures.append(_m(f"n{col}", "neutral", col, NEUTRAL, ref))
        measures.append(_m(f"s{col}", "smile", col, smile if ref else NEUTRAL, ref))  # characters lose the smile
        measures.append(_m(f"g{col}", "gasp", col, NEUTRAL if ref else gasp, ref))  # base model cannot gasp
        measures.append(_m(f"e{col}", "shut", col, shut, ref))  # everybody closes the eyes
    scores = compute_scores(measures, rows)
    assert scores.expressions["smile"].verdict == VERDICT_LOST
    assert scores.expressions["gasp"].verdict == VERDICT_HARD
    assert scores.expressions["shut"].verdict == VERDICT_KEPT
    assert scores.expressions["gasp"].difficulty < scores.expressions["smile"].difficulty
    assert "neutral" not in scores.expressions


def test_a_character_without_faces_loses_reach_but_an_unmeasurable_reference_is_not_held_against_it():
    rows = [{"id": "neutral", "action_units": []}, {"id": "smile", "action_units": [12]}]
    measures = [_m("n1", "neutral", "reference", NEUTRAL, True), _m("s1", "smile", "reference", None, True),
                _m("n2", "neutral", "a", NEUTRAL), _m("s2", "smile", "a", _with(lip_corner_lift=0.2))]
    scores = compute_scores(measures, rows)
    assert scores.characters["a"].reach is None  # no reference face in the only expression row
    assert scores.expressions["smile"].verdict.startswith("not measured")
    measures[1] = _m("s1", "smile", "reference", _with(lip_corner_lift=0.2), True)
    measures[3] = _m("s2", "smile", "a", None)
    scores = compute_scores(measures, rows)
    assert scores.characters["a"].reach == 0.0 and scores.characters["a"].flexibility == 0.0


def test_analyze_shows_its_progress_on_stderr(tmp_path):
    # Not a terminal here, so the log-file form (test_cli_basics shows its time left); on a terminal, a bar.
    run_dir = tmp_path / "run"
    validation.build_validation_run(run_dir, dict(list(face_columns().items())[:1])).close()
    result = CliRunner().invoke(main, ["analyze", str(run_dir)], env={"EXPRESSIONGRID_NO_PROGRESS": "0"})
    assert result.exit_code == 0
    assert "progress: 4/4 cell (100%), " in result.stderr and " cell/s, " in result.stderr
    assert "4/4" not in result.stdout


def test_several_samples_per_cell_are_each_read_against_their_own_neutral_sample():
    rows = [{"id": "neutral", "action_units": []}, {"id": "smile", "action_units": [12]}]
    smiling = _with(lip_corner_lift=0.2)
    measures = []
    # Sample 0: neutral, then a smile. Sample 1: the seed gave a smiling "neutral" and the same smile.
    for sample, rest in ((0, NEUTRAL), (1, smiling)):
        for col, ref in (("reference", True), ("a", False)):
            measures.append(CellMeasure(f"n{col}{sample}", 0, "neutral", col, ref, True, rest, sample=sample))
            measures.append(CellMeasure(f"s{col}{sample}", 0, "smile", col, ref, True, smiling, sample=sample))
    scores = compute_scores(measures, rows)
    assert scores.cells["sa0"].fidelity == pytest.approx(1.0)
    # Against sample 0's neutral this cell would read as a full smile; against its own it did not move.
    assert scores.cells["sa1"].fidelity == pytest.approx(0.0)
    assert scores.characters["a"].reach == pytest.approx(1.0)  # same as the reference, sample by sample


def test_an_unreadable_cell_image_is_recorded_and_the_rest_is_analysed(tmp_path):
    run_dir = tmp_path / "run"
    validation.build_validation_run(run_dir, dict(list(face_columns().items())[:2])).close()
    with Store.open_existing(run_dir) as store:
        broken = next(c for c in store.cells() if c.row_id == "open" and c.col_id == "hopper")
    (run_dir / broken.file).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    result = CliRunner().invoke(main, ["analyze", str(run_dir)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output
    assert "measured 7" in result.output and "1 unreadable" in result.output
    s = _cell_scores(run_dir)
    assert s[("open", "hopper")]["note"].startswith("unreadable:")
    assert s[("sad", "hopper")]["fidelity"] > 0.45


def test_a_cell_whose_head_turned_far_from_its_neutral_is_flagged_not_scored():
    rows = [{"id": "neutral", "action_units": []}, {"id": "smile", "action_units": [12]}]
    measures = [_m("n1", "neutral", "reference", NEUTRAL, True), _m("s1", "smile", "reference", _with(lip_corner_lift=0.2), True),
                _m("n2", "neutral", "a", NEUTRAL), _m("s2", "smile", "a", _with(lip_corner_lift=0.2, yaw=25.0))]
    scores = compute_scores(measures, rows)
    turned = scores.cells["s2"]
    assert turned.pose_flag and turned.fidelity is None and turned.aus is None
    assert "head turned 25 degrees" in turned.note
    assert scores.cells["s1"].fidelity == pytest.approx(1.0) and not scores.cells["s1"].pose_flag


def test_the_scores_and_the_judging_questions_read_against_the_same_neutral_row():
    from types import SimpleNamespace

    from expressiongrid.judge.questions import build_questions

    # No row has the id "neutral"; the resting row is labelled so, after a row without target AUs.
    rows = [{"id": "blank", "label": "blank stare", "action_units": []},
            {"id": "smile", "label": "smile", "action_units": [12]},
            {"id": "rest", "label": "Neutral face", "action_units": []},
            {"id": "wink", "label": "wink", "action_units": [46]}]
    measures = [_m(f"{r['id']}a", r["id"], "a", NEUTRAL) for r in rows] + \
        [_m(f"{r['id']}r", r["id"], "reference", NEUTRAL, True) for r in rows]
    scores = compute_scores(measures, rows)
    cells = [SimpleNamespace(key=f"{r['id']}a", page=0, row_index=i, col_index=1, row_id=r["id"], row_label=r["label"],
                             col_id="a", col_label="a", status="done", file="x.png") for i, r in enumerate(rows)]
    [identity] = [q for q in build_questions(cells, kinds=("identity",))]
    assert scores.neutral_row == "rest" == identity.to_dict()["reference_key"].removesuffix("a")


def test_cells_without_a_face_are_counted_and_stay_in_the_stability_denominator():
    rows = [{"id": "neutral", "action_units": []}, {"id": "smile", "action_units": [12]},
            {"id": "gasp", "action_units": [25]}]
    me = [0.0] * 128
    measures = [_m("nr", "neutral", "reference", NEUTRAL, True, me), _m("sr", "smile", "reference", NEUTRAL, True, me),
                _m("gr", "gasp", "reference", NEUTRAL, True, me),
                _m("na", "neutral", "a", NEUTRAL, emb=me), _m("sa", "smile", "a", NEUTRAL, emb=[0.01] * 128),
                _m("ga", "gasp", "a", None)]
    scores = compute_scores(measures, rows)
    a = scores.characters["a"]
    # One of two expressive cells kept the identity; the one that lost its face did not.
    assert a.no_face == 1 and a.identity_stability == pytest.approx(0.5) and a.flagged == 0
    assert scores.expressions["gasp"].no_face == 1 and scores.expressions["smile"].no_face == 0
