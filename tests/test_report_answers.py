"""The study's questions in the report: group comparisons, easy / lost / hard expressions, what is not measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from expressiongrid.analysis.groups import compare_groups
from expressiongrid.analysis.scores import VERDICT_HARD, VERDICT_KEPT, VERDICT_LOST
from expressiongrid.characters.files import load_character
from expressiongrid.errors import CharacterError
from expressiongrid.report.answers import answers
from expressiongrid.report.data import ReportData
from expressiongrid.report.html import render_html
from expressiongrid.report.markdown import render_markdown


def test_groups_that_differ_get_a_small_p_value_and_groups_that_do_not_a_large_one():
    flexible = {f"celeb{i}": (0.8 + 0.02 * i, {"kind": "lora", "group": "celebrity"}) for i in range(5)}
    stiff = {f"nobody{i}": (0.3 + 0.02 * i, {"kind": "lora", "group": "nobody"}) for i in range(5)}
    [by_group] = compare_groups({**flexible, **stiff})  # one kind only: nothing to compare by kind
    assert by_group.attribute == "group" and by_group.p_value < 0.01
    celeb, nobody = by_group.groups
    assert celeb.name == "celebrity" and celeb.low <= celeb.mean <= celeb.high and celeb.low > nobody.high
    mixed = {f"c{i}": (v, {"group": "a" if i % 2 else "b"}) for i, v in enumerate([0.3, 0.6, 0.8, 0.4, 0.5, 0.6])}
    assert compare_groups(mixed)[0].p_value > 0.2
    # Too few characters to say anything: no comparison rather than a meaningless one.
    assert compare_groups({"a": (0.5, {"group": "x"}), "b": (0.6, {"group": "y"})}) == []


def _data():
    columns = [("reference", "reference")] + [(f"c{i}", f"char {i}") for i in range(6)]
    characters = [{"col_id": "reference", "is_reference": 1, "flexibility": 1.0}] + [
        {"col_id": f"c{i}", "is_reference": 0, "flexibility": 0.9 if i < 3 else 0.2} for i in range(6)]
    for r in characters:
        r.update(reach=r["flexibility"], distinctness=1.0, identity_stability=1.0, mean_identity_distance=0.3,
                 faces_found=4, cells=4, flagged=0, no_face=0, pose_flagged=0)
    expressions = [
        {"row_id": "smile", "verdict": VERDICT_KEPT, "base_fidelity": 0.9, "character_fidelity": 0.8, "loss": 0.1},
        {"row_id": "rage", "verdict": VERDICT_LOST, "base_fidelity": 0.8, "character_fidelity": 0.2, "loss": 0.6},
        {"row_id": "wink", "verdict": VERDICT_HARD, "base_fidelity": 0.1, "character_fidelity": 0.05, "loss": 0.05},
    ]
    for e in expressions:
        e.update(difficulty=1 - e["character_fidelity"], targets_json="[]", unmeasured_json="[]", no_face=0)
    attrs = {f"c{i}": {"kind": "lora" if i % 2 else "embedding", "group": "celebrity" if i < 3 else "nobody"}
             for i in range(6)}
    return ReportData(title="t", run_dir=Path("."), rows=[("neutral", "neutral"), ("smile", "smile"),
                                                          ("rage", "rage"), ("wink", "wink")],
                      columns=columns, reference={"reference"}, row_targets={}, cells=[], characters=characters,
                      expressions=expressions, analysed=True, column_attributes=attrs)


def test_the_report_answers_the_study_questions():
    data = _data()
    a = answers(data)
    assert {c.attribute for c in a.groups} == {"kind", "group"}
    assert [lbl for lbl, _, _ in a.lost] == ["rage"] and [lbl for lbl, _, _ in a.hard] == ["wink"]
    assert {name for name, _ in a.not_measured} >= {"mood", "camera shot", "likelihood of AI"}
    html = render_html(data)
    assert "Flexibility by <bdi>group</bdi>" in html and "permutation test" in html
    assert "Easy for the base model but lost with characters" in html and "<li><bdi>rage</bdi>:" in html
    assert "Hard even for the base model" in html and "<li><bdi>wink</bdi>:" in html
    assert "likelihood of AI" in html
    article = render_markdown(data, [], Path("post"), Path("."))
    assert "**Easy for the base model but lost with characters:** rage." in article
    assert "**Hard even for the base model:** wink." in article


def test_character_files_carry_tags_and_their_kind(tmp_path):
    (tmp_path / "anna.safetensors").write_bytes(b"")
    path = tmp_path / "anna.toml"
    path.write_text('lora = "anna.safetensors"\n[tags]\ngroup = "celebrity"\ncreator = "someone"\n')
    anna = load_character(path)
    assert anna.tags == {"group": "celebrity", "creator": "someone"} and anna.kind == "lora"
    path.write_text('lora = "anna.safetensors"\n[tags]\ngruop = "celebrity"\n')
    with pytest.raises(CharacterError, match="unknown key.*gruop"):
        load_character(path)
