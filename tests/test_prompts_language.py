"""Prompt language behaviour beyond the compat corpus: calls, tags, warnings, explain, the CLI, robustness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from expressiongrid.cli import main
from expressiongrid.errors import PromptSyntaxError, SamplerError
from expressiongrid.prompts import (
    NetworkRef,
    PromptWarning,
    explain,
    extract_networks,
    get_hires_schedule,
    get_schedule,
    is_second_order,
    parse_attention,
    schedule_index_for_call,
    split_and,
    total_model_calls,
)
from expressiongrid.prompts.attention import parse_attention_with_warnings
from expressiongrid.prompts.schedule import parse_schedule_tree

SEED_PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: neutral face expression: 0.2], RAW photo, 1girl"


# -- which text each model call uses (req 2) -------------------------------------------------------------


def test_first_entry_covers_one_extra_call():
    schedule = get_schedule("[a:b:5]", 10)
    assert [schedule[schedule_index_for_call(schedule, c)][1] for c in range(10)] == ["a"] * 6 + ["b"] * 4


def test_alternation_uses_the_first_option_for_calls_zero_and_one():
    schedule = get_schedule("[a|b]", 6)
    assert [schedule[schedule_index_for_call(schedule, c)][1] for c in range(6)] == ["a", "a", "b", "a", "b", "a"]


def test_second_order_samplers_double_the_calls():
    assert is_second_order("Heun") and is_second_order("DPM++ SDE Karras") and is_second_order("DPM2 a")
    assert not is_second_order("Euler a") and not is_second_order("DPM++ 2M Karras")
    assert total_model_calls(20, "Heun") == 40
    assert total_model_calls(20, "Euler a") == 20
    assert total_model_calls(20) == 20
    # The seed prompt's 20 % switch happens after 8 of Heun's 40 calls, i.e. still 20 % of the way.
    assert get_schedule(SEED_PROMPT, total_model_calls(20, "Heun"))[0][0] == 8
    with pytest.raises(SamplerError):
        is_second_order("Not A Sampler")


def test_hires_pass_rules():
    assert get_hires_schedule("[a:b:25]", 20, 10) == [(5, "a"), (10, "b")]  # steps count across both passes
    assert get_hires_schedule("[a:b:1.5]", 20, 10) == [(5, "a"), (10, "b")]  # 1..2 addresses the hires pass
    assert get_hires_schedule("[a:b:0.5]", 20, 10) == [(10, "b")]  # first-pass switch: already "after"
    assert get_hires_schedule("[a:b:2.0]", 20, 10) == [(10, "a")]


# -- AND, BREAK and extra networks (req 4) ----------------------------------------------------------------


def test_lora_tags_are_extracted_with_their_weights():
    clean, refs = extract_networks("a <lora:add_detail:0.6> b <lora:style:0.5:0.8> <lyco:old> <lora:n:te=0.3:unet=0.9>")
    assert clean == "a  b   "
    assert refs[0] == NetworkRef("lora", "add_detail", 0.6, 0.6, "<lora:add_detail:0.6>", 2)
    assert (refs[1].te_weight, refs[1].unet_weight) == (0.5, 0.8)
    assert (refs[2].kind, refs[2].name, refs[2].te_weight, refs[2].unet_weight) == ("lora", "old", 1.0, 1.0)
    assert (refs[3].te_weight, refs[3].unet_weight) == (0.3, 0.9)


def test_tags_are_extracted_before_editing_and_and_splitting():
    clean, refs = extract_networks("[<lora:a:1>:<lora:b:1>:0.5] AND c")
    assert [r.name for r in refs] == ["a", "b"]
    assert clean == "[::0.5] AND c"
    assert split_and(clean) == (["[::0.5]", " c"], [1.0, 1.0])


def test_bad_lora_weight_is_a_syntax_error_with_position():
    with pytest.raises(PromptSyntaxError) as info:
        extract_networks("a <lora:x:strong>")
    assert info.value.position == 2


def test_negative_prompt_tags_stay_text_and_are_reported():
    result = explain("a cat", 10, negative_prompt="blurry <lora:bad:1>")
    assert result.networks == []
    assert result.negative.schedule[0].text == "blurry <lora:bad:1>"
    assert any(w.kind == "network-in-negative" and w.position == 7 for w in result.warnings)


def test_lora_tag_arguments_this_tool_does_not_apply_are_said():
    def ignored(prompt):
        return [w.message for w in explain(prompt, 10).warnings if w.kind == "ignored-network-argument"]

    assert "dyn=8 not applied" in ignored("a <lora:x:1:0.5:dyn=8>")[0]
    assert "dynamic dim 4 not applied" in ignored("a <lyco:x:1:0.5:4>")[0]  # A1111's fourth value is dyn
    assert "foo=2 not applied" in ignored("a <lora:x:te=1:foo=2>")[0]
    assert ignored("a <lora:x:1:unet=0.5:te=0.7> <lora:y:0.6:0.4>") == []


def test_break_splits_chunks_only_outside_brackets():
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    # Inside brackets the marker is multiplied too: no longer a break, the word "BREAK" at weight -1.1.
    assert parse_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    _, warnings = parse_attention_with_warnings("(a BREAK b)")
    assert [w.kind for w in warnings] == ["break-in-brackets"]
    assert explain("a BREAK b", 10, tokenizer="tiny").parts[0].schedule[0].chunk_tokens == [1, 1]


# -- warnings where A1111 silently falls back (req 7) ----------------------------------------------------


def test_parse_failure_is_used_literally_and_reported_with_position():
    prompt = "a | b [c:d:5]"
    assert get_schedule(prompt, 10) == [(10, prompt)]
    result = parse_schedule_tree(prompt)
    assert result.tree is None
    assert result.warnings == [PromptWarning("schedule-parse-failed", result.warnings[0].message, 2)]
    assert "literally" in result.warnings[0].message


def test_trailing_backslash_is_reported():
    result = parse_schedule_tree("[a:b:3] c\\")
    assert result.tree is None and result.warnings[0].position == 9


def test_edit_that_is_not_valid_is_reported_as_literal():
    result = parse_schedule_tree("a [b:c:x] d")
    assert result.tree is not None
    assert [(w.kind, w.position) for w in result.warnings] == [("literal-edit", 2)]


def test_unbalanced_emphasis_brackets_are_reported():
    parsed, warnings = parse_attention_with_warnings("a (b c")
    assert parsed == [("a ", 1.0), ("b c", 1.1)]  # A1111 weights everything after an unclosed "("
    assert [(w.kind, w.position) for w in warnings] == [("unbalanced-bracket", 2)]
    parsed, warnings = parse_attention_with_warnings("a b) c")
    assert parsed == [("a b) c", 1.0)]
    assert [(w.kind, w.position) for w in warnings] == [("unbalanced-bracket", 3)]


def test_explain_reports_syntax_errors_instead_of_raising():
    result = explain("a (b:1.2.3)", 10, tokenizer="tiny")
    assert result.parts[0].schedule[0].error is not None
    assert any(w.kind == "syntax-error" for w in result.warnings)


def test_explain_strict_raises_the_first_syntax_error():
    assert explain("a (b:1.2.3)", 10, tokenizer="tiny").errors
    with pytest.raises(PromptSyntaxError, match="1.2.3"):
        explain("a (b:1.2.3)", 10, tokenizer="tiny", strict=True)
    with pytest.raises(PromptSyntaxError):
        explain("a <lora:x:heavy>", 10, tokenizer="tiny", strict=True)
    assert explain("a (b:1.2)", 10, tokenizer="tiny", strict=True).errors == []


def test_explain_maps_positions_back_past_removed_tags():
    prompt = "<lora:abc:0.5> x | y"
    result = explain(prompt, 10, tokenizer="tiny")
    failed = [w for w in result.warnings if w.kind == "schedule-parse-failed"]
    assert failed and failed[0].position == prompt.index("|")


def test_edit_timing_warnings():
    kinds = {w.kind for w in explain(SEED_PROMPT, 4, tokenizer="tiny").warnings}
    assert "edit-never-before" in kinds  # 20 % of 4 steps is below one step
    kinds = {w.kind for w in explain("[a:b:1.0]", 10, tokenizer="tiny").warnings}
    assert "edit-never-after" in kinds
    assert explain(SEED_PROMPT, 20, tokenizer="tiny").warnings == []


# -- explain (req 8) ----------------------------------------------------------------------------------------


def test_explain_shows_schedule_steps_fragments_tokens_and_tags():
    result = explain(SEED_PROMPT.replace("1girl", "(1girl:1.2) <lora:char:0.7>"), 20, "Euler a")
    assert result.tokenizer == "sd15"
    assert [n.name for n in result.networks] == ["char"]
    first, second = result.parts[0].schedule
    assert (first.first_step, first.last_step, second.first_step, second.last_step) == (0, 4, 5, 19)
    assert ("1girl", 1.2) in first.fragments
    # Real SD1.5 vocabulary: "closeup of woman facing viewer, hair, neck, eyes, lips, raw photo, 1girl " is 18 tokens.
    assert first.chunk_tokens == [first.token_count] and 10 < first.token_count < 30
    assert first.target_token_count == 75


def test_explain_heun_steps_are_half_the_calls():
    result = explain("[a:b:0.5]", 10, "Heun", tokenizer="tiny")
    first, second = result.parts[0].schedule
    assert (first.first_call, first.last_call, second.first_call, second.last_call) == (0, 10, 11, 19)
    assert (first.first_step, first.last_step, second.first_step, second.last_step) == (0, 5, 5, 9)


def test_cli_explain_text_output():
    result = CliRunner().invoke(main, ["prompt", "explain", SEED_PROMPT + " <lora:char:0.7>", "--steps", "20"])
    assert result.exit_code == 0, result.output
    assert "steps 1-5 (calls 0-4): 'closeup of woman facing viewer, hair, neck, eyes, lips, RAW photo, 1girl'" in result.output
    assert "steps 6-20 (calls 5-19)" in result.output
    assert "lora: char (text encoder 0.7, unet 0.7)" in result.output
    assert "/75" in result.output


def test_cli_explain_json_and_warnings():
    result = CliRunner().invoke(main, ["prompt", "explain", "a | b [c:d:5]", "--steps", "10", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parts"][0]["schedule"][0]["text"] == "a | b [c:d:5]"
    assert data["warnings"][0]["kind"] == "schedule-parse-failed"
    assert data["warnings"][0]["position"] == 2
    text = CliRunner().invoke(main, ["prompt", "explain", "a | b", "--steps", "10"]).output
    assert "Warnings:" in text and "schedule-parse-failed (at position 2)" in text


def test_explain_says_when_a_study_would_refuse_the_prompt_for_its_length():
    from expressiongrid.limits import MAX_PROMPT_CHARS

    long = "a, " * (MAX_PROMPT_CHARS // 3 + 1)
    kinds = [(w.kind, w.message.split(":")[0]) for w in explain(long, 2, negative_prompt=long, tokenizer="tiny").warnings]
    assert ("too-long", "prompt") in kinds and ("too-long", "negative prompt") in kinds
    assert not [w for w in explain("a, " * 100, 2, tokenizer="tiny").warnings if w.kind == "too-long"]


def test_cli_explain_unknown_sampler_is_a_usage_error():
    result = CliRunner().invoke(main, ["prompt", "explain", "a", "--steps", "10", "--sampler", "Nope"])
    assert result.exit_code == 2
    assert "unknown sampler" in result.output


def test_prompt_explain_runs_without_torch():
    code = (
        "import sys\n"
        "from expressiongrid.cli import main\n"
        "try:\n"
        "    main(['prompt', 'explain', 'a [cat:dog:0.5] (x:1.2) <lora:y:1>', '--steps', '20', '--sampler', 'Heun'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'a cat (x:1.2)'" in out.stdout and "'a dog (x:1.2)'" in out.stdout, out.stdout


def test_prompt_language_imports_no_torch():
    code = (
        "import sys\n"
        "import expressiongrid.prompts as p\n"
        "from expressiongrid.prompts import attention, calls, chunking, emphasis, explanation, multicond, networks, schedule, tokens\n"
        "names = ['get_schedule', 'get_hires_schedule', 'is_second_order', 'total_model_calls', 'schedule_index_for_call',\n"
        "         'parse_attention', 'split_and', 'extract_networks', 'NetworkRef', 'explain', 'PromptWarning']\n"
        "assert all(callable(getattr(p, n)) for n in names)\n"
        "p.explain('a', 3); p.explain('b', 3)\n"
        "assert callable(p.explain), 'the explain function was replaced by a module'\n"
        "bad = [m for m in ('torch', 'transformers', 'diffusers', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_pure_token_counter_matches_transformers_tokenizer(tiny_tokenizer):
    from expressiongrid.prompts.tokens import load_tokenizer

    texts = [SEED_PROMPT, "Café naïve 日本語 it's  1girl\t\n(a:1.2) <x> ÅÅ e\u0301", "", "🙂🙂 8k,,,"]
    tiny = load_tokenizer("tiny")
    for text in texts:
        assert tiny.encode(text) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    from expressiongrid.prompts.tokens import SD15_TOKENIZER_DIR

    if (SD15_TOKENIZER_DIR / "vocab.json").exists():
        from transformers import CLIPTokenizer

        real = CLIPTokenizer.from_pretrained(str(SD15_TOKENIZER_DIR))
        sd15 = load_tokenizer("sd15")
        for text in texts:
            assert sd15.encode(text) == real(text, add_special_tokens=False)["input_ids"]


# -- never crashes (req 9) --------------------------------------------------------------------------------

PIECES = st.sampled_from(["[", "]", "(", ")", ":", "|", "\\", " ", "a", "b", "0.5", "3", "AND", "BREAK", "<lora:x:1>", "\n", "1e1", "-"])


def _check_everything(prompt: str, steps: int) -> None:
    for schedule, n in ((get_schedule(prompt, steps), steps), (get_hires_schedule(prompt, steps, max(1, steps // 2)), max(1, steps // 2))):
        ends = [e for e, _ in schedule]
        assert ends == sorted(set(ends)) and ends[-1] == n and ends[0] >= 1
        for _, text in schedule:
            try:
                parse_attention(text)
            except PromptSyntaxError as exc:
                assert exc.position is not None
    texts, weights = split_and(prompt)
    assert len(texts) == len(weights)
    try:
        extract_networks(prompt)
    except PromptSyntaxError:
        pass
    explain(prompt, steps, tokenizer="tiny")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80), st.integers(min_value=1, max_value=50))
def test_any_unicode_string_never_crashes(prompt, steps):
    _check_everything(prompt, steps)


@settings(max_examples=150, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join), st.integers(min_value=1, max_value=50))
def test_any_string_of_grammar_pieces_never_crashes(prompt, steps):
    _check_everything(prompt, steps)


def test_deep_nesting_is_refused_gracefully():
    prompt = "[" * 5000 + "a" + "]" * 5000
    assert get_schedule(prompt, 10) == [(10, prompt)]
    assert parse_schedule_tree(prompt).warnings[0].kind == "too-deep"
    # Emphasis: every open bracket multiplies what follows, so past the limit parsing would go quadratic.
    with pytest.raises(PromptSyntaxError, match="more than 100 brackets are open") as exc:
        parse_attention(prompt)
    assert exc.value.position == 100
    assert parse_attention("(" * 100 + "a")[0][0] == "a"  # 100 open at once are still read


@pytest.mark.parametrize("number, expected", [
    ("1e400", [(10, "a")]), ("1.e400", [(10, "a")]), ("9" * 400, [(10, "a")]), ("+1e999999999999", [(10, "a")]),
    ("-1e400", [(10, "b")]), ("-" + "9" * 400 + ".5", [(10, "b")]), ("-0", [(10, "b")]), ("-0.0", [(10, "b")]),
    ("0e400", [(10, "b")]), ("1e-400", [(10, "b")]), ("1" + "0" * 30, [(10, "a")]),
])
def test_prompt_editing_numbers_of_any_magnitude_give_a_schedule(number, expected):
    # A1111 stops with OverflowError on the infinite ones; past either end of the steps means the same.
    assert get_schedule(f"[a:b:{number}]", 10) == expected
    assert get_hires_schedule(f"[a:b:{number}]", 10, 5)[-1][0] == 5


@pytest.mark.parametrize("prompt", ["(cat:" + "9" * 400 + ")", "(cat:" + "9" * 309 + ".5)"])
def test_an_infinite_emphasis_weight_is_a_syntax_error(prompt):
    with pytest.raises(PromptSyntaxError, match="too large to be a number") as exc:
        parse_attention(prompt)
    assert exc.value.position == 5


@pytest.mark.parametrize("tag, message", [
    ("<lora:x:nan>", "is not a number"), ("<lora:x:inf>", "is not a number"), ("<lora:x:1e400>", "is not a number"),
    ("<lora:x:1:-infinity>", "is not a number"), ("<lora:x:1e30>", "beyond"), ("<lora:x:-101>", "beyond"),
])
def test_lora_weights_must_be_finite_and_sane(tag, message):
    with pytest.raises(PromptSyntaxError, match=message):
        extract_networks("a " + tag)
    assert extract_networks("a <lora:x:-100>")[1][0].te_weight == -100


def test_long_whitespace_and_many_unclosed_brackets_parse_in_linear_time():
    # A regex with a leading \s* (A1111's BREAK split) took seconds on 10,000 spaces; unclosed brackets
    # multiplied everything after each one. Counted as work, not time: the number of fragments stays small.
    assert parse_attention(" " * 10_000 + "BREAK" + " " * 10_000 + "x") == [("", 1.0), ("BREAK", -1.0), ("x", 1.0)]
    with pytest.raises(PromptSyntaxError):
        parse_attention("[a:" * 3000)
