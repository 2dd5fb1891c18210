"""Cell metadata as data: the A1111 text is formatted from it, and older cells' text reads back into it."""

from __future__ import annotations

from types import SimpleNamespace

from expressiongrid.output.infotext import parse_parameters
from expressiongrid.output.metadata import CellMetadata, grid_metadata, record_metadata


def _meta(**kw) -> CellMetadata:
    base = dict(prompt="closeup, (smiling:1.2) <lora:anna:0.8>", negative_prompt="blurry", steps=20,
                sampler="DPM++ 2M", schedule_type="Karras", cfg_scale=7.0, seed=42, width=512, height=768,
                model="v1-5", model_hash="6ce0161689", clip_skip=2, rng="CPU",
                lora_hashes={"anna": "abcdef123456"}, hashes={"model": "6ce0161689", "lora:anna": "0123456789"},
                civitai_resources=[{"type": "lora", "weight": 0.8, "modelVersionId": 7}],
                resources=[{"type": "lora", "name": "anna", "weight": 0.8, "hash": "0123456789", "modelVersionId": 7}])
    base.update(kw)
    return CellMetadata(**base)


def test_text_is_formatted_from_the_data_and_reads_back():
    meta = _meta()
    text = meta.parameters()
    parsed = parse_parameters(text)
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras" and parsed["Clip skip"] == "2"
    assert parsed["Hashes"] == {"model": "6ce0161689", "lora:anna": "0123456789"}
    back = CellMetadata.from_parameters(text)
    assert back == _meta(resources=[])  # everything the text states; the full resource list is data only


def test_stored_data_survives_json_and_wins_over_text():
    meta = _meta()
    record = SimpleNamespace(metadata=meta.to_dict(), parameters="something else\nSteps: 1, Sampler: Euler, Seed: 1")
    assert record_metadata(record) == meta
    old = SimpleNamespace(metadata=None, parameters=meta.parameters())
    assert record_metadata(old) == _meta(resources=[])
    assert record_metadata(SimpleNamespace(metadata=None, parameters=None)) is None


def test_a_grid_lists_every_cells_resources_once():
    anna = _meta()
    bea = _meta(lora_hashes={"bea": "fedcba654321"}, hashes={"model": "6ce0161689", "lora:bea": "9876543210"},
                civitai_resources=[{"type": "lora", "weight": 1.0, "modelVersionId": 8}],
                resources=[{"type": "lora", "name": "bea", "hash": "9876543210"}])
    # the store's record keeps the prompt as it was encoded (an embedding's token); the grid states the first
    # cell's image text, as A1111's grid does
    first = SimpleNamespace(prompt="closeup, annaface", negative_prompt="n", steps=20, sampler="DPM++ 2M",
                            cfg_scale=7.0, seed=42, width=512, height=768)
    grid = grid_metadata([anna, bea, anna], first)
    assert grid.prompt == anna.prompt and grid.negative_prompt == "blurry" and grid.model == "v1-5"
    assert grid.hashes == {"model": "6ce0161689", "lora:anna": "0123456789", "lora:bea": "9876543210"}
    assert grid.lora_hashes == {"anna": "abcdef123456", "bea": "fedcba654321"}
    assert [r["modelVersionId"] for r in grid.civitai_resources] == [7, 8]
    assert [r["name"] for r in grid.resources] == ["anna", "bea"]
