"""A1111 `parameters` text: key order, quoting, civitai keys, and reading it back."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import load_jsonl
from expressiongrid.output.infotext import (
    format_parameters,
    grid_axes_params,
    merge_civitai_resources,
    merge_hashes,
    parse_name_hashes,
    parse_parameters,
)

# The worked example of A1111.md §10 (txt2img, DPM++ 2M, one Lora, one embedding, XYZ on CFG).
A1111_EXAMPLE = (
    "a photo of a [cat:dog:0.5], masterpiece <lora:add_detail:0.6>\n"
    "Negative prompt: easynegative, blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.0, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: \"add_detail: 7c6bad76eb54\", "
    "TI hashes: \"easynegative: c74b4e810b03\", Script: X/Y/Z plot, X Type: CFG Scale, X Values: \"5,7\", "
    "Version: v1.10.1"
)


def test_reproduces_a1111_example_exactly():
    text = format_parameters(
        "a photo of a [cat:dog:0.5], masterpiece <lora:add_detail:0.6>",
        "easynegative, blurry",
        steps=20,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=5.0,
        seed=1234,
        width=512,
        height=512,
        model_hash="6ce0161689",
        model="v1-5-pruned-emaonly",
        lora_hashes={"add_detail": "7c6bad76eb54"},
        ti_hashes={"easynegative": "c74b4e810b03"},
        extra=grid_axes_params([("X", "CFG Scale", "5,7"), ("Y", "Nothing", ""), ("Z", "Nothing", "")]),
        version="v1.10.1",
    )
    assert text == A1111_EXAMPLE


def test_parses_a1111_example():
    parsed = parse_parameters(A1111_EXAMPLE)
    assert parsed["Prompt"] == "a photo of a [cat:dog:0.5], masterpiece <lora:add_detail:0.6>"
    assert parsed["Negative prompt"] == "easynegative, blurry"
    assert parsed["Steps"] == "20" and parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "512"
    assert parsed["X Values"] == "5,7"
    assert parse_name_hashes(parsed["Lora hashes"]) == {"add_detail": "7c6bad76eb54"}
    assert parsed["Clip skip"] == "1" and parsed["RNG"] == "GPU"  # A1111 defaults filled in


def test_omits_empty_and_default_values():
    text = format_parameters("a cat", "", steps=4, sampler="Euler", cfg_scale=7, seed=1, width=64, height=64,
                             clip_skip=1, rng="GPU")
    assert "Negative prompt" not in text
    assert "Clip skip" not in text and "RNG" not in text and "Model hash" not in text
    text = format_parameters("a cat", "", steps=4, sampler="Euler", cfg_scale=7, seed=1, width=64, height=64,
                             clip_skip=2, rng="CPU")
    assert "Clip skip: 2, RNG: CPU" in text
    assert text.splitlines()[1].startswith("Steps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")


def test_old_style_sampler_name_is_split_like_a1111():
    parsed = parse_parameters("x\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 8x8")
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"


def test_values_that_look_quoted_survive():
    text = format_parameters("p", "", steps=1, sampler="Euler", cfg_scale=1, seed=1, width=8, height=8,
                             model='"quoted"')
    assert parse_parameters(text)["Model"] == '"quoted"'


def test_short_last_line_belongs_to_the_prompt():
    parsed = parse_parameters("a cat\nSteps: 20, Sampler: Euler")
    assert parsed["Prompt"] == "a cat\nSteps: 20, Sampler: Euler"
    assert "Steps" not in parsed


CIVITAI_HASHES = re.compile(r", Hashes:\s*({[^}]+})")
CIVITAI_RESOURCES = re.compile(r", Civitai resources:\s*(\[\{.*?\}\])")


def test_civitai_keys_are_bare_json_that_civitai_finds():
    hashes = {"model": "6ce0161689", "lora:anna": "0a1b2c3d4e", "embed:bob": "ffeeddccbb"}
    resources = [
        {"type": "checkpoint", "modelVersionId": 128713},
        {"type": "lora", "weight": 0.8, "modelVersionId": 55},
        {"type": "embed", "modelVersionId": 77},
    ]
    text = format_parameters("p <lora:anna:0.8>", "n", steps=20, sampler="Euler a", cfg_scale=7.0, seed=5,
                             width=512, height=512, model_hash="6ce0161689", model="v1-5",
                             lora_hashes={"anna": "0123456789ab"}, hashes=hashes, civitai_resources=resources)
    line = text.splitlines()[-1]
    assert line.startswith("Steps: ")  # civitai looks for the line starting with "Steps: "
    assert json.loads(CIVITAI_HASHES.search(line).group(1)) == hashes
    assert json.loads(CIVITAI_RESOURCES.search(line).group(1)) == resources
    parsed = parse_parameters(text)
    assert parsed["Hashes"] == hashes
    assert parsed["Civitai resources"] == resources
    assert parsed["Model hash"] == "6ce0161689" and parsed["Version"].startswith("expressiongrid")


def test_a_quoted_value_that_looks_like_a_hashes_key_is_a_value():
    """A label reading `a, Hashes: {}` is written quoted; the real Hashes after it are the Hashes."""
    hashes = {"model": "6ce0161689", "lora:anna": "0a1b2c3d4e"}
    text = ("p\nSteps: 20, Sampler: Euler a, Seed: 5, Y Type: Prompt S/R, Y Values: \"a, Hashes: {}\", "
            f"Hashes: {json.dumps(hashes)}, Version: v1.10.1")
    parsed = parse_parameters(text)
    assert parsed["Y Values"] == "a, Hashes: {}"
    assert parsed["Hashes"] == hashes
    assert parsed["Version"] == "v1.10.1"


def test_grid_keys_follow_xyz_runs_corpus():
    for run in load_jsonl("xyz_runs.jsonl"):
        if "expected" not in run or not run["expected"].get("saved_grids"):
            continue
        axes = [(letter.upper(), *run["input"][letter]) for letter in ("x", "y", "z") if letter in run["input"]]
        assert grid_axes_params(axes) == run["expected"]["saved_grids"][0]["extra_generation_params"], run["name"]


def test_grid_lists_every_resource_once():
    merged = merge_hashes({"model": "m1", "lora:a": "h1"}, None, {"model": "m1", "embed:b": "h2"})
    assert merged == {"model": "m1", "lora:a": "h1", "embed:b": "h2"}
    resources = merge_civitai_resources(
        [{"type": "checkpoint", "modelVersionId": 1}], [{"type": "checkpoint", "modelVersionId": 1},
                                                        {"type": "lora", "modelVersionId": 2, "weight": 1}]
    )
    assert [r["modelVersionId"] for r in resources] == [1, 2]
    fixed = grid_axes_params([("X", "Seed", "-1,5")], fixed={"X": "123, 5"})
    assert fixed["Fixed X Values"] == "123, 5"


_line = st.text(
    alphabet=st.sampled_from(list("abcXYZ ,:()[]<>|\"'\\日本🙂0123.")), min_size=1, max_size=40
).map(str.strip).filter(lambda s: s and not s.startswith("Negative prompt:"))


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.lists(_line, min_size=1, max_size=3).map("\n".join),
    negative=st.lists(_line, min_size=0, max_size=2).map("\n".join),
    seed=st.integers(0, 2**32 - 1),
    cfg=st.floats(0, 30, allow_nan=False).map(lambda x: round(x, 2)),
    lora=st.from_regex(r"[A-Za-z][A-Za-z0-9_ .\-]{0,15}", fullmatch=True),
    model=_line,
)
def test_round_trip(prompt, negative, seed, cfg, lora, model):
    text = format_parameters(prompt, negative, steps=20, sampler="DPM++ 2M", cfg_scale=cfg, seed=seed,
                             width=512, height=768, model=model, lora_hashes={lora: "0123456789ab"},
                             hashes={"model": "abc", f"lora:{lora}": "def"})
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Seed"] == str(seed) and parsed["CFG scale"] == str(cfg)
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "768"
    assert parsed["Model"] == model
    assert parse_name_hashes(parsed["Lora hashes"]) == {lora.strip(): "0123456789ab"}
    assert parsed["Hashes"] == {"model": "abc", f"lora:{lora}": "def"}
