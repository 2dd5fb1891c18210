"""The prompt language against cases produced by A1111's own code (../shared/compat)."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
from conftest import ROOT, load_jsonl

from expressiongrid.errors import ExpressionGridError, PromptSyntaxError
from expressiongrid.prompts import get_hires_schedule, get_schedule, parse_attention, split_and
from expressiongrid.prompts.chunking import Embedding, chunk_fragments
from expressiongrid.prompts.emphasis import apply_emphasis
from expressiongrid.prompts.multicond import unique_texts


def _as_lists(schedule):
    return [[end, text] for end, text in schedule]


def test_schedules_match_a1111():
    rows = load_jsonl("schedules.jsonl")
    assert len(rows) > 300
    failures = [
        (r["prompt"], r["steps"]) for r in rows if _as_lists(get_schedule(r["prompt"], r["steps"])) != r["expected"]
    ]
    assert failures == []


def test_seed_prompt_schedule():
    prompt = "closeup of woman facing viewer, [hair, neck, eyes, lips: neutral face expression: 0.2], RAW photo, 1girl"
    assert get_schedule(prompt, 20) == [
        (4, "closeup of woman facing viewer, hair, neck, eyes, lips, RAW photo, 1girl"),
        (20, "closeup of woman facing viewer,  neutral face expression, RAW photo, 1girl"),
    ]
    # Below 5 steps 20 % is less than one step: only the expression text is used.
    assert get_schedule(prompt, 4) == [(4, "closeup of woman facing viewer,  neutral face expression, RAW photo, 1girl")]


def test_ambiguous_schedules_give_one_possible_answer():
    rows = load_jsonl("schedules_ambiguous.jsonl")
    for r in rows:
        assert _as_lists(get_schedule(r["prompt"], r["steps"])) in r["possible"], r["prompt"]


AMBIGUOUS_CHECK = """
import json, sys
sys.path.insert(0, 'tests')
from conftest import load_jsonl
from expressiongrid.prompts import get_schedule
print(json.dumps([get_schedule(r['prompt'], r['steps']) for r in load_jsonl('schedules_ambiguous.jsonl')]))
"""


def test_ambiguous_schedules_do_not_depend_on_hash_seed():
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", AMBIGUOUS_CHECK], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        outputs.add(out.stdout)
    assert len(outputs) == 1


def test_hires_schedules_match_a1111():
    rows = load_jsonl("schedules_hires.jsonl")
    failures = [
        r["prompt"]
        for r in rows
        if _as_lists(get_hires_schedule(r["prompt"], r["base_steps"], r["hires_steps"])) != r["expected"]
    ]
    assert failures == []


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("[a:b:0]", 10, [(10, "b")]),
        ("[a:b:1]", 10, [(1, "a"), (10, "b")]),
        ("[a:b:1.0]", 10, [(10, "a")]),  # a dot means a fraction: 1.0 is 100 %
        ("[a:b:0.99]", 10, [(9, "a"), (10, "b")]),
        ("[a:b:5e-1]", 10, [(10, "b")]),  # no dot: a step count, 0.5 truncates to 0
        ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),
        ("[a:b:-1]", 10, [(10, "b")]),
        ("[to:3]", 5, [(3, ""), (5, "to")]),
        ("[from::3]", 5, [(3, "from"), (5, "")]),
        ("[a|b]", 3, [(1, "a"), (2, "b"), (3, "a")]),
        ("[[a|b]:c:2]", 3, [(1, "a"), (2, "b"), (3, "c")]),
        ("a | b [c:d:5]", 10, [(10, "a | b [c:d:5]")]),  # parse failure: used literally
        ("a [b : c : 1] d", 3, [(1, "a b  d"), (3, "a  c  d")]),
        ("x\\", 3, [(3, "x\\")]),
    ],
)
def test_schedule_rules(prompt, steps, expected):
    assert get_schedule(prompt, steps) == expected


def test_attention_matches_a1111_exactly():
    rows = load_jsonl("attention.jsonl")
    for r in rows:
        got = [[t, w] for t, w in parse_attention(r["text"])]
        assert got == r["expected"], r["text"]  # equal floats, not approximately equal


def test_attention_errors_raise_prompt_syntax_error_with_position():
    rows = load_jsonl("attention_errors.jsonl")
    assert rows
    for r in rows:
        with pytest.raises(PromptSyntaxError) as info:
            parse_attention(r["text"])
        err = info.value
        assert isinstance(err, ExpressionGridError)
        assert err.position is not None and 0 <= err.position < len(r["text"])
        assert "position" in str(err)
        # The position points at the bad number inside a ":<number>)" weight.
        assert r["text"][err.position - 1] in ": \t" or r["text"][err.position] in "+-."


def test_attention_error_position_for_a_simple_case():
    with pytest.raises(PromptSyntaxError) as info:
        parse_attention("a (b:1.2.3)")
    assert info.value.position == 5
    assert "1.2.3" in str(info.value)


def test_multicond_matches_a1111():
    for r in load_jsonl("multicond.jsonl"):
        texts, weights = split_and(r["prompt"])
        assert texts == r["expected"]["texts"], r["prompt"]
        assert weights == r["expected"]["weights"], r["prompt"]
        assert unique_texts(texts) == r["expected"]["unique_texts"]


def _toy_id(token: str) -> int:
    return 267 if token == "," else 1000 + zlib.crc32(token.encode()) % 40000


def test_chunking_matches_a1111():
    rows = load_jsonl("chunking.jsonl")
    embeddings = [Embedding(name, (_toy_id(name),), (0,) * n) for name, n in (("emb2", 2), ("emb5", 5), ("emb80", 80))]
    for r in rows:
        # Our emphasis parser must give the fragments the row was chunked from.
        if r["emphasis"] != "None":
            assert [[t, w] for t, w in parse_attention(r["prompt"])] == r["parsed"], r["prompt"]
        fragments = [
            (None if (text == "BREAK" and weight == -1) else ids, weight)
            for (ids, weight), (text, _) in zip(r["fragments"], r["parsed"])
        ]
        got = chunk_fragments(
            fragments, bos=49406, eos=49407, comma=267, embeddings=embeddings,
            comma_padding_backtrack=r["comma_padding_backtrack"],
        )
        expected = r["expected"]
        assert got.token_count == expected["token_count"], r["prompt"]
        assert got.target_token_count == expected["target_prompt_token_count"]
        assert [c.tokens for c in got.chunks] == [c["tokens"] for c in expected["chunks"]], r["prompt"]
        assert [c.multipliers for c in got.chunks] == [c["multipliers"] for c in expected["chunks"]], r["prompt"]
        assert [[list(f) for f in c.fixes] for c in got.chunks] == [c["fixes"] for c in expected["chunks"]], r["prompt"]


def test_emphasis_normalisation_matches_a1111():
    np = pytest.importorskip("numpy")
    rows = load_jsonl("emphasis.jsonl")
    assert rows
    for r in rows:
        z = np.array(r["z"], dtype=np.float64)
        mults = np.array(r["multipliers"], dtype=np.float64)
        got = apply_emphasis(z, mults, r["emphasis"])
        np.testing.assert_allclose(got, np.array(r["expected"]), rtol=1e-12, atol=1e-15)


def test_emphasis_modes_on_a_small_case():
    np = pytest.importorskip("numpy")
    z = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    mults = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(apply_emphasis(z, mults, "Ignore"), z)
    np.testing.assert_array_equal(apply_emphasis(z, mults, "No norm"), [[[1.0, 2.0], [6.0, 8.0]]])
    original = apply_emphasis(z, mults, "Original")
    assert original.mean() == pytest.approx(z.mean())
    with pytest.raises(ExpressionGridError):
        apply_emphasis(z, mults, "Loud")


def test_results_compare_equal_to_a1111_json_form_directly():
    """Callers holding A1111's output as JSON lists can compare without converting (both directions)."""
    import json

    row = next(r for r in load_jsonl("schedules.jsonl") if len(r["expected"]) > 1)
    got = get_schedule(row["prompt"], row["steps"])
    assert got == row["expected"] and row["expected"] == got
    assert json.loads(json.dumps(got)) == row["expected"]
    assert got[0].end_step == row["expected"][0][0] and got[0].text == row["expected"][0][1]
    assert got != [[row["expected"][0][0] + 1, row["expected"][0][1]]] + row["expected"][1:]

    arow = next(r for r in load_jsonl("attention.jsonl") if len(r["expected"]) > 1)
    fragments = parse_attention(arow["text"])
    assert fragments == arow["expected"] and arow["expected"] == fragments
    assert (fragments[0].text, fragments[0].weight) == tuple(arow["expected"][0])
    assert fragments[0] == tuple(arow["expected"][0])  # still a plain tuple to tuple users
    assert fragments[0] != [arow["expected"][0][0], arow["expected"][0][1], 0]
