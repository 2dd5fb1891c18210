"""Real cells from the tiny diffusers pipeline -> cell PNGs with parameters -> a labelled grid -> read back."""

from __future__ import annotations

import pytest
from PIL import Image

from expressiongrid.output.grid import compose_grid, plan_grid, write_grid
from expressiongrid.output.images import read_parameters, save_png
from expressiongrid.output.infotext import (
    format_parameters,
    grid_axes_params,
    merge_hashes,
    parse_parameters,
)
from expressiongrid.study.axes import parse_axis, prompt_sr

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

TEMPLATE = "closeup of woman facing viewer, [hair, neck, eyes, lips: neutral face expression: 0.2], RAW photo, 1girl"
NEGATIVE = "naked, illustration, 3d, drawing, cartoon, anime, 2girls"


@pytest.mark.slow
def test_tiny_model_cells_to_grid_with_metadata(tmp_path, tiny_pipeline):
    import torch

    rows = parse_axis("Expression", "seed-study").values[:3]
    columns = parse_axis("Prompt S/R", "1girl, 1woman")  # first value is the search text
    cells, cell_hashes = [], []
    for r, expression in enumerate(rows):
        row = []
        for c, replacement in enumerate(columns.values):
            prompt = TEMPLATE.replace("neutral face expression", expression.prompt)
            prompt, negative = prompt_sr(prompt, NEGATIVE, columns.values[0], replacement)
            image = tiny_pipeline(prompt, negative_prompt=negative, num_inference_steps=2, height=64, width=64,
                                  guidance_scale=7.0, generator=torch.Generator().manual_seed(1234)).images[0]
            hashes = {"model": "0123456789", f"lora:char{c}": f"{c}" * 10}
            text = format_parameters(prompt, negative, steps=2, sampler="Euler", cfg_scale=7.0, seed=1234,
                                     width=64, height=64, model="tiny", rng="CPU", hashes=hashes)
            path = save_png(tmp_path / "cells" / f"{r}-{c}.png", image, text)
            row.append(path)
            cell_hashes.append(hashes)
        cells.append(row)

    back = parse_parameters(read_parameters(cells[2][1]))
    assert back["Prompt"] == TEMPLATE.replace("neutral face expression", rows[2].prompt).replace("1girl", "1woman")
    assert back["Negative prompt"] == NEGATIVE
    assert back["Seed"] == "1234" and back["RNG"] == "CPU" and back["Size-1"] == "64"

    first = parse_parameters(read_parameters(cells[0][0]))
    grid_text = format_parameters(
        first["Prompt"], first["Negative prompt"], steps=2, sampler="Euler", cfg_scale=7.0, seed=1234,
        width=64, height=64, model="tiny", rng="CPU", hashes=merge_hashes(*cell_hashes),
        extra=grid_axes_params([("X", "Prompt S/R", columns.text), ("Y", "Expression", "seed-study")]),
    )
    pages = compose_grid(cells, [e.label for e in rows], columns.labels, title="tiny model")
    (page,) = pages
    assert page.size == plan_grid(3, 2, (64, 64), [e.label for e in rows], columns.labels, "tiny model").pages[0].size
    (files,) = write_grid(pages, tmp_path / "grids", "grid", grid_text)
    grid_back = parse_parameters(read_parameters(files["grid"]))
    assert grid_back["Hashes"] == {"model": "0123456789", "lora:char0": "0" * 10, "lora:char1": "1" * 10}
    assert grid_back["Y Type"] == "Expression" and grid_back["X Values"] == "1girl, 1woman"
    assert parse_parameters(read_parameters(files["upload"]))["Hashes"] == grid_back["Hashes"]
    with Image.open(files["upload"]) as im:
        assert im.format == "JPEG" and im.size == page.size
