"""Axis parsing: A1111's X/Y/Z value syntax, legends and errors (../shared/compat/xyz_axis.jsonl)."""

from __future__ import annotations

import random

import pytest

from conftest import load_jsonl
from expressiongrid.errors import UsageError
from expressiongrid.study.axes import (
    AxisError,
    axis_type,
    console_line,
    parse_axis,
    parse_size,
    prompt_order,
    prompt_sr,
    split_values,
)

CASES = load_jsonl("xyz_axis.jsonl")


def _case_id(case):
    return f"{case['axis']}:{case['values']!r}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_a1111_corpus(case):
    if "error" in case:
        with pytest.raises(AxisError) as info:
            parse_axis(case["axis"], case["values"])
        message = str(info.value)
        assert case["axis"] in message
        assert isinstance(info.value, UsageError)
        # The message quotes the offending value as the user typed it.
        assert any(repr(item) in message for item in split_values(case["values"]) if item), message
        return
    result = parse_axis(case["axis"], case["values"], fix_seeds=not case.get("no_fixed_seeds", False))
    expected = case["expected"]
    if any(x is None for x in expected["xs"]):
        # None marks a -1 that A1111 replaced by random.randrange(4294967294).
        assert len(result.values) == len(expected["xs"])
        for got, want in zip(result.values, expected["xs"]):
            if want is None:
                assert isinstance(got, int) and 0 <= got < 4294967294
            else:
                assert got == want
        assert result.fixed_seeds
        return
    assert result.values == expected["xs"]
    assert [type(v) for v in result.values] == [type(v) for v in expected["xs"]]
    assert result.labels == expected["labels"]
    assert console_line(result) == expected["console"]


def test_unpacks_as_values_and_labels():
    values, labels = parse_axis("CFG Scale", "5, 7.5")
    assert values == [5.0, 7.5]
    assert labels == ["CFG Scale: 5.0", "CFG Scale: 7.5"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10-1 (-3)", [10, 7, 4]),
        ("5-1 (-1)", [5, 4, 3]),  # A1111 keeps the +1 of ascending ranges: stops early
        ("0-10 [4]", [0, 3, 6, 10]),  # truncation, not rounding
        ("1-5 [0]", []),
        ("07, +3", [7, 3]),
        ("1-3\n5", [1, 2, 3, 5]),
    ],
)
def test_int_ranges(text, expected):
    assert parse_axis("Steps", text).values == expected


@pytest.mark.parametrize(
    "text, bad",
    [("1-5 (2)", "1-5 (2)"), ("1-5 (+0)", "1-5 (+0)"), ("ten", "ten"), ('"1,2"', "1,2")],
)
def test_int_errors_name_axis_and_value(text, bad):
    with pytest.raises(AxisError) as info:
        parse_axis("Steps", text)
    assert "Steps axis" in str(info.value)
    assert repr(bad) in str(info.value)
    assert info.value.value == bad


def test_float_ranges_follow_numpy_arange_and_linspace():
    assert parse_axis("CFG Scale", "0.1-0.5 (+0.1)").values == [0.1, 0.2, 0.30000000000000004, 0.4, 0.5]
    assert parse_axis("CFG Scale", "1e1").values == [10.0]
    assert parse_axis("LoRA weight", "0-1 [5]").labels == [
        "LoRA weight: 0.0", "LoRA weight: 0.25", "LoRA weight: 0.5", "LoRA weight: 0.75", "LoRA weight: 1.0"
    ]
    with pytest.raises(AxisError, match="step of 0"):
        parse_axis("CFG Scale", "1-2 (+0)")
    with pytest.raises(AxisError, match="CFG Scale axis"):
        parse_axis("CFG Scale", "1-2 (+.5)")


def test_csv_quoting_and_empty_items():
    assert split_values('a, "b, c", d') == ["a", "b, c", "d"]
    assert split_values('say ""hi"", "x ""y"""') == ['say ""hi""', 'x "y"']
    assert split_values("dog\\, wolf") == ["dog\\", "wolf"]
    assert parse_axis("Prompt S/R", "cat,,dog").values == ["cat", "", "dog"]
    assert parse_axis("Steps", "1,,2").values == [1, 2]


def test_labels_by_axis_kind():
    assert parse_axis("Checkpoint name", "a/b/model.safetensors, tiny").labels == ["model.safetensors", "tiny"]
    assert parse_axis("Sampler", "Euler a, k_dpmpp_2m").labels == ["Euler a", "k_dpmpp_2m"]
    assert parse_axis("Nothing", "whatever") .labels == [""]
    assert parse_axis("Size", "512x768").labels == ["Size: 512x768"]
    assert parse_axis("Character", "characters/anna.toml, reference").labels == ["anna", "reference"]


def test_sampler_error_lists_known_names():
    with pytest.raises(AxisError) as info:
        parse_axis("Sampler", "DPM++ 2M, Nope")
    assert "'Nope'" in str(info.value) and "Euler a" in str(info.value)


def test_unknown_axis_lists_the_supported_ones():
    with pytest.raises(AxisError) as info:
        parse_axis("Stepz", "1")
    assert "Stepz" in str(info.value) and "Steps" in str(info.value)
    assert axis_type("checkpoint").name == "Checkpoint name"
    assert axis_type("cfg scale").name == "CFG Scale"


def test_seed_minus_one_is_fixed_reproducibly_with_given_rng():
    a = parse_axis("Seed", "-1, 5, -1", rng=random.Random(3))
    b = parse_axis("Seed", "-1, 5, -1", rng=random.Random(3))
    assert a.values == b.values and a.values[1] == 5 and a.fixed_seeds
    assert a.labels == [f"Seed: {v}" for v in a.values]
    kept = parse_axis("Seed", "-1, 5", fix_seeds=False)
    assert kept.values == [-1, 5] and not kept.fixed_seeds


def test_size_values_are_kept_but_bad_ones_warned_and_parse_size_rejects():
    result = parse_axis("Size", "512x768, bad")
    assert result.values == ["512x768", "bad"]
    assert len(result.warnings) == 1 and "'bad'" in result.warnings[0]
    assert parse_size(" 512 x 768") == (512, 768)
    with pytest.raises(AxisError, match="multiples of 8"):
        parse_size("500x500")


def test_prompt_sr_replaces_in_prompt_and_negative():
    values = parse_axis("Prompt S/R", "neutral face expression, smiling").values
    prompt = "closeup, [hair: neutral face expression: 0.2], 1girl"
    negative = "neutral face expression, blurry"
    assert prompt_sr(prompt, negative, values[0], values[0]) == (prompt, negative)
    new_prompt, new_negative = prompt_sr(prompt, negative, values[0], values[1])
    assert new_prompt == "closeup, [hair: smiling: 0.2], 1girl"
    assert new_negative == "smiling, blurry"
    with pytest.raises(AxisError, match="'zebra'"):
        prompt_sr(prompt, negative, "zebra", "horse")


def test_prompt_order_permutes_in_place():
    values = parse_axis("Prompt order", "a photo, cat, masterpiece").values
    assert len(values) == 6
    assert prompt_order("a photo of a cat, masterpiece", ["masterpiece", "a photo", "cat"]) == (
        "masterpiece of a a photo, cat"
    )


def test_console_line_with_z_axis_and_batches():
    x = parse_axis("Steps", "10,20")
    z = parse_axis("CFG Scale", "5,7")
    assert console_line(x, None, z, images_per_cell=2) == (
        "X/Y/Z plot will create 8 images on 2 2x1 grids; 2 images per cell. (Total steps to process: 60)"
    )


def test_expression_axis_from_set_name_and_inline():
    rows = parse_axis("Expression", "seed-study")
    assert len(rows) == 9 and rows.labels[0] == "neutral"
    assert rows.values[8].prompt.startswith("teasing flirty")
    inline = parse_axis("Expression", "smiling, crying, smiling")
    assert [e.id for e in inline.values] == ["smiling", "crying", "smiling-2"]
    assert inline.labels == ["smiling", "crying", "smiling"]
    with pytest.raises(UsageError, match="unmatched"):
        parse_axis("Expression", "smiling], crying")


def test_parse_axis_is_public_from_study_package():
    from expressiongrid.study import parse_axis as public

    assert public("Steps", "10,20").values == [10, 20]


def test_axes_and_announcement_of_whole_xyz_runs():
    for run in load_jsonl("xyz_runs.jsonl"):
        if "expected" not in run:
            continue
        expected = run["expected"]
        parsed = {}
        for letter in ("x", "y", "z"):
            name, text = run["input"].get(letter, ("Nothing", ""))
            parsed[letter] = parse_axis(name, text)
            assert parsed[letter].values == expected[f"{letter}s"], (run["name"], letter)
            assert parsed[letter].labels == expected["labels"][letter], (run["name"], letter)
        line = console_line(parsed["x"], parsed["y"], parsed["z"], steps=run["base"]["steps"])
        assert line == expected["console"], run["name"]


def test_prompt_sr_error_of_xyz_runs_corpus():
    (run,) = [r for r in load_jsonl("xyz_runs.jsonl") if r["name"] == "x_sr_not_found"]
    values = parse_axis(*run["input"]["x"]).values
    with pytest.raises(AxisError) as info:
        prompt_sr("a photo of a cat, masterpiece", "blurry, cat ears", values[0], values[1])
    assert "zebra" in str(info.value) and "Prompt S/R" in str(info.value)
