"""The built-in tiny model is deterministic, SD1.5-shaped and fast."""


import pytest
import torch

from expressiongrid import tiny

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_vocabulary_matches_clip_conventions(tiny_tokenizer):
    vocab, _ = tiny.tiny_vocab()
    assert vocab[",</w>"] == 267  # CLIP's id for the comma, which A1111's comma backtrack looks for
    ids = tiny_tokenizer("smiling, neutral face expression").input_ids
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert tiny_tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["smiling</w>", ",</w>", "neutral</w>", "face</w>", "expression</w>"]
    # Unknown words still tokenize (character by character), never to an unknown token.
    assert len(tiny_tokenizer("xyzzy").input_ids) == 2 + 5


def test_weights_identical_between_builds():
    a, b = tiny.build_unet(), tiny.build_unet()
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_building_does_not_touch_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tiny.build_tiny_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_the_tiny_pipeline_makes_a_64px_image(tiny_pipeline):
    out = tiny_pipeline("closeup of woman smiling", num_inference_steps=10, height=64, width=64,
                        generator=torch.Generator().manual_seed(1))
    assert out.images[0].size == (64, 64)
