"""Expression sets: the shipped sets, validation with file/key/expected, and `expressions list`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from expressiongrid.cli import main
from expressiongrid.errors import UsageError
from expressiongrid.study.expressions import (
    ExpressionSetError,
    find_expression_set,
    list_expression_sets,
    load_expression_set,
    normalise_action_unit,
)

ROOT = Path(__file__).resolve().parents[1]
SEED_STUDY_PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: neutral face expression: 0.2], RAW photo, 1girl"


def test_every_shipped_set_loads():
    files = sorted((ROOT / "expressions").glob("*.toml"))
    assert len(files) >= 5
    for file in files:
        loaded = load_expression_set(file)
        assert len(loaded) > 0
        assert len({e.id for e in loaded}) == len(loaded)


def test_seed_study_rows_are_the_studys_keywords_in_order():
    rows = load_expression_set(find_expression_set("seed-study"))
    prompts = [e.prompt for e in rows]
    assert len(rows) == 9
    assert prompts[0] == "neutral face expression"  # the study prompt's own text
    assert prompts[0] in SEED_STUDY_PROMPT
    assert prompts[1:4] == ["bored apathetic tired", "frowning disappointed", "open mouth confused surprised gasping"]
    assert "closed mouth closed smiling" in prompts
    assert prompts[6:8] == ["laughing hysterically", "sad crying eyes closed"]
    assert prompts[8] == "teasing flirty playful suggestive seductive smirking squinting aroused horny"
    assert all(e.label for e in rows)


def test_difficult_set_has_the_eight_hard_expressions():
    hard = load_expression_set(find_expression_set("seed_study_difficult"))
    assert [e.prompt for e in hard] == [
        "excited",
        "looking away",
        "pouting",
        "pleading puppy dog eyes",
        "embarrassed blushing looking down",
        "suspicious skeptical raising eyebrow skeptycally",
        "kissing with eyes closed and puckered lips",
        "biting lip",
    ]


def test_basic_emotions_have_the_au_prototypes():
    basic = load_expression_set(find_expression_set("basic-emotions"))
    aus = {e.id: e.action_units for e in basic}
    assert aus == {
        "happiness": ("6", "12"),
        "sadness": ("1", "4", "15"),
        "surprise": ("1", "2", "5", "26"),
        "fear": ("1", "2", "4", "5", "7", "20", "26"),
        "anger": ("4", "5", "7", "23"),
        "disgust": ("9", "15", "16"),
        "contempt": ("R12", "R14"),
    }
    assert basic.get("contempt").au_numbers == (12, 14)


def test_blog_post_nuance_sets():
    anger = load_expression_set(find_expression_set("anger-nuances"))
    shame = load_expression_set(find_expression_set("shame-nuances"))
    assert "despair and rage" in [e.prompt for e in anger]
    assert "fury and determination" in [e.prompt for e in anger]
    assert "guilt, regret, a sense of responsibility" in [e.prompt for e in shame]
    assert len(shame) == 10


def test_expression_text_fits_into_the_seed_prompt_schedule():
    # Each expression replaces the text inside [from: to: 0.2]; a ':' or bracket would break the edit.
    for s in list_expression_sets():
        for e in s:
            assert ":" not in e.prompt and "[" not in e.prompt and "]" not in e.prompt, (s.id, e.id)


def _write(tmp_path, text):
    path = tmp_path / "rows.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_all_problems_reported_with_file_key_and_expectation(tmp_path):
    path = _write(
        tmp_path,
        """
[set]
id = "mine"
[[expression]]
id = "smile"
label = "smile"
prompt = "smiling"
action_units = [6, "AU12", "r12"]
[[expression]]
id = "smile"
label = ""
prompt = "a: b"
action_units = [0, "X7"]
colour = "red"
""",
    )
    with pytest.raises(ExpressionSetError) as info:
        load_expression_set(path)
    err = info.value
    assert isinstance(err, UsageError)
    text = "\n".join(err.problems)
    assert str(path) in str(err)
    assert all(p.startswith(str(path)) for p in err.problems)
    assert "expression[2].id: 'smile' is already used by expression[1]" in text
    assert "expression[2].label: expected a non-empty string" in text
    assert "expression[2].prompt" in text and "':'" in text
    assert "expression[2].action_units" in text and "0" in text and "'X7'" in text
    assert "unknown key(s) colour" in text


def test_valid_custom_file_normalises_action_units(tmp_path):
    path = _write(
        tmp_path,
        '[set]\nid = "mine"\ntitle = "Mine"\n[[expression]]\nid = "s"\nlabel = "S"\nprompt = "(smiling:1.2)"\n'
        'action_units = [6, "AU12", "r12", "12c"]\n',
    )
    loaded = load_expression_set(path)
    assert loaded.expressions[0].action_units == ("6", "12", "R12", "12C")
    assert normalise_action_unit(" au 4 ") == "4"
    with pytest.raises(ValueError):
        normalise_action_unit(True)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ExpressionSetError, match="not valid TOML"):
        load_expression_set(_write(tmp_path, "[set\n"))
    with pytest.raises(ExpressionSetError, match="not found.*seed-study"):
        load_expression_set(tmp_path / "missing.toml")
    with pytest.raises(ExpressionSetError) as info:
        load_expression_set(_write(tmp_path, '[set]\nid = "x"\n'))
    assert "1 problem" in str(info.value)
    assert "at least one [[expression]]" in info.value.problems[0]


def test_cli_lists_sets_and_one_set():
    runner = CliRunner()
    result = runner.invoke(main, ["expressions", "list"])
    assert result.exit_code == 0, result.output
    assert "seed-study" in result.output and "basic-emotions" in result.output
    result = runner.invoke(main, ["expressions", "list", "seed-study"])
    assert result.exit_code == 0, result.output
    assert "closed mouth closed smiling" in result.output
    assert "R12+6+7" in result.output
    result = runner.invoke(main, ["expressions", "list", "basic-emotions", "--json"])
    data = json.loads(result.output)
    assert data["expressions"][0]["action_units"] == ["6", "12"]


def test_cli_reports_bad_file_as_usage_error(tmp_path):
    path = _write(tmp_path, '[[expression]]\nid = "a"\nlabel = "a"\n')
    result = CliRunner().invoke(main, ["expressions", "list", str(path)])
    assert result.exit_code == 2
    assert "expression[1].prompt: expected a non-empty string" in result.output
    assert "Traceback" not in result.output


def test_cli_list_shows_broken_sets_in_working_folder(tmp_path, monkeypatch):
    (tmp_path / "expressions").mkdir()
    (tmp_path / "expressions" / "mine.toml").write_text(
        '[set]\nid = "mine"\ntitle = "Mine"\n[[expression]]\nid = "a"\nlabel = "A"\nprompt = "smiling"\n'
    )
    (tmp_path / "expressions" / "broken.toml").write_text('[set]\nid = "broken"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["expressions", "list"])
    assert result.exit_code == 0, result.output
    assert "mine" in result.output and "seed-study" in result.output
    assert "broken" in result.output and "invalid" in result.output


def test_builtin_sets_are_package_data_so_a_wheel_install_has_them():
    """A plain `pip install` (no checkout) must still list the built-in sets."""
    from expressiongrid.study.expressions import builtin_sets_dir

    import expressiongrid

    package_dir = Path(expressiongrid.__file__).resolve().parent
    assert package_dir in builtin_sets_dir().resolve().parents
    assert {p.stem for p in builtin_sets_dir().glob("*.toml")} >= {"seed_study", "basic_emotions"}
