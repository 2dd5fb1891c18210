"""`expressiongrid import`: A1111 parameters (images, text, X/Y/Z grid infotexts) become studies that remake them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import load_jsonl
from expressiongrid.cli import main
from expressiongrid.output.infotext import format_parameters, parse_parameters
from expressiongrid.study.importer import import_parameters, import_source
from expressiongrid.study.plan import plan
from expressiongrid.study.study import load_study, study_from_dict

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

RUNS = [c for c in load_jsonl("xyz_runs.jsonl") if "expected" in c]
A1111_EXAMPLE = (  # A1111.md §10, as A1111 1.10 writes it
    "a photo of a [cat:dog:0.5], masterpiece <lora:add_detail:0.6>\n"
    "Negative prompt: easynegative, blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.0, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: \"add_detail: 7c6bad76eb54\", "
    "TI hashes: \"easynegative: c74b4e810b03\", Script: X/Y/Z plot, X Type: CFG Scale, X Values: \"5,7\", "
    "Version: v1.10.1")


def _a1111_grid_infotext(case) -> str:
    """The grid infotext A1111 wrote for a run of xyz_runs.jsonl: cell (0,0,0)'s parameters plus the axes."""
    base, call = case["base"], case["expected"]["calls"][0]
    extra = case["expected"]["result_infotexts"][0]
    return format_parameters(call["prompt"], call["negative_prompt"], steps=call["steps"], sampler=call["sampler_name"],
                             cfg_scale=call["cfg_scale"], seed=call["seed"], width=base["width"], height=base["height"],
                             model="v1-5-pruned-emaonly", extra=extra, version="v1.10.1")


@pytest.fixture
def webui(tmp_path, monkeypatch):
    root = tmp_path / "webui"
    import numpy as np
    from safetensors.numpy import save_file

    for i, rel in enumerate(("models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
                             "models/Stable-diffusion/sub/dreamshaper_8.safetensors")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)  # checkpoint-shaped names, tiny contents
        save_file({"model.diffusion_model.w": np.full((4,), i, np.float32)}, str(root / rel))
    (root / "models/Lora").mkdir(parents=True)
    (root / "embeddings").mkdir()
    conf = tmp_path / "config.toml"
    conf.write_text(f'[paths]\nwebui = "{root}"\n', encoding="utf-8")
    monkeypatch.setenv("EXPRESSIONGRID_CONFIG", str(conf))
    return root


# A1111 does not write "Vary seeds" into the grid's infotext, so no import can know it was on.
REPLAYABLE = [c for c in RUNS if not any(c["input"].get(s, [""])[0] == "Schedule type" for s in "xyz")
              and not any(c["input"].get("vary", []))]


@pytest.mark.parametrize("case", REPLAYABLE, ids=lambda c: c["name"])
def test_a1111_xyz_grid_infotext_becomes_a_study_that_replays_a1111s_calls(case, webui, tmp_path):
    result = import_parameters(_a1111_grid_infotext(case), name=case["name"])
    assert result.unresolved == []  # every axis and setting of these runs carries over
    study = study_from_dict(tomllib.loads(result.toml), base_dir=tmp_path, source="imported")
    assert Path(study.model.source) == webui / "models/Stable-diffusion/v1-5-pruned-emaonly.safetensors"
    exp = case["expected"]
    p = plan(study)
    assert [[c.col_index, c.row_index, c.page] for c in p.cells] == exp["order"]
    assert [v.label for v in study.columns.values] == exp["labels"]["x"]
    assert [v.label for v in study.rows.values] == exp["labels"]["y"]
    for cell, call in zip(p.cells, exp["calls"], strict=True):
        s = cell.spec
        assert (s.prompt, s.negative_prompt, s.seed, s.steps, s.cfg_scale, s.width, s.height, s.sampler) == (
            call["prompt"], call["negative_prompt"], call["seed"], call["steps"], call["cfg_scale"], call["width"],
            call["height"], call["sampler_name"])
        ckpt = call["override_settings"].get("sd_model_checkpoint")
        if ckpt:  # found in the configured A1111 folder, by the name the grid wrote
            assert Path(s.model.source) == webui / "models/Stable-diffusion" / ckpt


def test_a1111_parameters_with_models_loras_and_embeddings_found_by_hash(webui, tmp_path):
    import hashlib

    from safetensors.numpy import save_file
    import numpy as np

    # the user's files carry other names than the image's, as after a rename: found by hash, renamed in the prompt
    lora = webui / "models/Lora/detail-tweaker.safetensors"
    save_file({"lora_unet_x.lora_down.weight": np.zeros((1, 4), np.float32)}, str(lora))
    emb = webui / "embeddings/EasyNeg.safetensors"
    save_file({"emb_params": np.ones((1, 4), np.float32)}, str(emb))
    ckpt = webui / "models/Stable-diffusion/v1-5-pruned-emaonly.safetensors"
    from expressiongrid.characters.hashes import lora_short_hash

    text = A1111_EXAMPLE.replace("6ce0161689", hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10])
    text = text.replace("7c6bad76eb54", lora_short_hash(lora)).replace("c74b4e810b03",
                                                                       hashlib.sha256(emb.read_bytes()).hexdigest()[:12])
    text = text.replace("Version: v1.10.1", "Hires upscale: 2, Hires steps: 10, Version: v1.10.1")
    result = import_parameters(text, name="example")
    data = tomllib.loads(result.toml)
    assert data["model"]["source"] == "v1-5-pruned-emaonly.safetensors"
    assert data["prompt"]["positive"] == "a photo of a [cat:dog:0.5], masterpiece <lora:detail-tweaker:0.6>"
    assert data["prompt"]["negative"] == "EasyNeg, blurry"
    assert data["sampling"] == {"sampler": "DPM++ 2M", "schedule_type": "Karras", "steps": 20, "cfg_scale": 5.0, "seed": 1234,
                                "width": 512, "height": 512, "noise_source": "gpu"}
    assert data["columns"] == {"axis": "CFG Scale", "values": "5,7"} and data["rows"] == {"axis": "Nothing"}
    # what this tool does not have is said, in the result and at the top of the file
    assert [u.split(":")[0] for u in result.unresolved] == ["Hires upscale", "Hires steps"]
    assert "#   - Hires upscale: 2: not a setting of this tool" in result.toml
    assert any("GPU noise" in n for n in result.notes)


def test_what_cannot_be_found_is_listed_with_the_folders_searched(webui):
    result = import_parameters(A1111_EXAMPLE.replace("X Type: CFG Scale", "X Type: Denoising"))
    text = "\n".join(result.unresolved)
    assert "LoRA add_detail (hash 7c6bad76eb54): not found (searched " + str(webui / "models/Lora") in text
    assert "embedding easynegative (hash c74b4e810b03): not found" in text
    assert "Model: v1-5-pruned-emaonly (hash 6ce0161689)" not in text  # found by name: the hash is not required
    assert "X axis Denoising: 5,7: not an axis this tool runs" in text
    own = import_parameters(A1111_EXAMPLE.replace("X Type: CFG Scale", "X Type: Character"))
    assert "X axis Character: 5,7: this tool's own axis, which import does not rebuild" in "\n".join(own.unresolved)
    windows = import_parameters(A1111_EXAMPLE.replace("X Type: CFG Scale", "X Type: Denoising").replace("\n", "\r\n"))
    assert windows.study == result.study and windows.unresolved == result.unresolved


def _xyz(tmp_path, out: str, *extra) -> Path:
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a portrait, (smile:1.2)", "--negative-prompt", "blurry",
                                       "--seed", "77", "--width", "64", "--height", "64", "--sampler", "DPM++ 2M Karras",
                                       "--out", str(tmp_path / out), *extra])
    assert result.exit_code == 0, result.output
    return tmp_path / out


def _cell_parameters(run_dir: Path) -> list[str]:
    from expressiongrid.store import Store

    return [c.parameters for c in Store.open_existing(run_dir).cells()]


@pytest.mark.slow
def test_round_trip_grid_and_single_image_remake_the_same_metadata(tmp_path):
    """An X/Y/Z grid made here, imported and run again, makes cells whose parameters match the first run's;
    one cell's PNG, and a JPEG upload copy carrying it in EXIF, import to the same one-cell study."""
    first = _xyz(tmp_path, "first", "--x", "Steps: 2,3", "--y", "CFG Scale: 4,6", "--clip-skip", "2")
    grid = next((first / "grids").glob("*.png"))
    out = tmp_path / "remake.toml"
    result = CliRunner().invoke(main, ["import", str(grid), "--out", str(out)])
    assert result.exit_code == 0 and "not carried over" not in result.output, result.output
    study = load_study(out)
    assert (study.columns.kind, study.rows.kind) == ("Steps", "CFG Scale")
    again = CliRunner().invoke(main, ["run", str(out), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert sorted(_cell_parameters(tmp_path / "again")) == sorted(_cell_parameters(first))

    from PIL import Image

    from expressiongrid.output.images import read_parameters, save_jpeg
    from expressiongrid.store import Store

    cell = Store.open_existing(first).cells()[0]
    png = first / cell.file
    jpeg = tmp_path / "upload.jpg"
    with Image.open(png) as im:
        save_jpeg(jpeg, im, read_parameters(png))
    one = import_source(png)
    from_jpeg = import_source(jpeg)
    assert {**from_jpeg.study, "name": ""} == {**one.study, "name": ""} and one.unresolved == from_jpeg.unresolved == []
    (tmp_path / "one.toml").write_text(one.toml, encoding="utf-8")
    single = CliRunner().invoke(main, ["run", str(tmp_path / "one.toml"), "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    assert _cell_parameters(tmp_path / "one") == [cell.parameters]


def _pixels(run_dir: Path) -> list[bytes]:
    from PIL import Image

    from expressiongrid.store import Store

    with Store.open_existing(run_dir) as store:
        files = [run_dir / c.file for c in store.cells("done")]
    out = []
    for path in files:
        with Image.open(path) as im:
            out.append(im.convert("RGB").tobytes())
    return out


def test_a_grid_made_with_varied_seeds_or_several_seeds_per_cell_imports_to_the_same_seeds(tmp_path):
    """A1111's grid keys cannot say "Vary seeds" or several samples per cell: the grid's text says them in
    keys of its own, which import reads back, so the imported study plans exactly the grid's images."""
    from expressiongrid.analysis.imported import run_from_grid
    from expressiongrid.output.images import read_parameters
    from expressiongrid.store import Store
    from test_metadata_a1111 import civitai_read

    for flags, keys, sampling, (images, seeds) in (
            (["--vary-seeds", "x", "--vary-seeds", "y"], 'Vary seeds: "X, Y"',
             {"seed_policy": "vary", "vary": ["columns", "rows"]}, (4, 4)),
            (["--seeds-per-cell", "2"], "Seeds per cell: 2", {"seed_policy": "per-cell", "seeds_per_cell": 2}, (8, 2))):
        first = _xyz(tmp_path, flags[-1], "--x", "Steps: 2,3", "--y", "CFG Scale: 4,6", *flags)
        grid = next((first / "grids").glob("*.png"))
        text = read_parameters(grid)
        assert keys in text
        read = civitai_read(text)  # civitai's reader takes the rest of the line as before
        assert (read["Seed"], read["Size"], read["Version"]) == ("77", "64x64", "expressiongrid 0.1.0")
        assert parse_parameters(text)["Seed"] == "77"
        result = import_source(grid)
        assert result.unresolved == [] and not any("Vary seeds" in n for n in result.notes), result
        assert {k: result.study["sampling"][k] for k in sampling} == sampling
        study = study_from_dict(tomllib.loads(result.toml), base_dir=tmp_path, source="imported")
        made = sorted((c.prompt, c.negative_prompt, c.steps, c.cfg_scale, c.seed, c.width, c.height, c.sampler)
                      for c in Store.open_existing(first).cells())
        assert len(made) == images and len({m[4] for m in made}) == seeds  # not one seed for every image
        planned = sorted((s.prompt, s.negative_prompt, s.steps, s.cfg_scale, s.seed, s.width, s.height, s.sampler)
                         for s in (c.spec for c in plan(study).cells))
        assert planned == made  # the same images, seeds and all
        # `analyze GRID` cuts the grid into its images: with several per cell, each sample is one of them.
        cut = run_from_grid(grid, tmp_path / f"{flags[-1]}-cut")
        assert sorted(_pixels(cut)) == sorted(_pixels(first))

    # A1111's own grid text cannot say it, so the import says what it could not know.
    a1111 = import_parameters(A1111_EXAMPLE)
    assert any('A1111 does not write "Vary seeds"' in n for n in a1111.notes)
    bad = import_parameters(A1111_EXAMPLE.replace("Version: v1.10.1", "Vary seeds: Q, Version: expressiongrid 0.1.0"))
    assert ("Vary seeds: Q: expected grid axes X, Y and/or Z; left out (the study uses one seed for every cell)"
            in bad.unresolved) and "seed_policy" not in bad.study["sampling"]


def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "prose.txt").write_text("just a prompt, no settings line\n", encoding="utf-8")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    for name, message in (("empty.txt", "empty"), ("prose.txt", "not A1111 parameters"),
                          ("plain.png", "has no A1111 parameters"), ("missing.png", "file not found")):
        result = CliRunner().invoke(main, ["import", str(tmp_path / name), "--out", str(tmp_path / "x.toml")])
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    (tmp_path / "x.toml").write_text("mine", encoding="utf-8")
    (tmp_path / "ok.txt").write_text(A1111_EXAMPLE, encoding="utf-8")
    refused = CliRunner().invoke(main, ["import", str(tmp_path / "ok.txt"), "--out", str(tmp_path / "x.toml")])
    assert refused.exit_code == 2 and (tmp_path / "x.toml").read_text() == "mine"


def test_a_varied_seed_grid_whose_first_cell_failed_still_states_the_base_seed(tmp_path, monkeypatch):
    """With varied seeds the grid's `Seed` is where the grid's seeds start (its first cell's), which an
    import counts on; when that cell failed, the first cell that was made has another seed."""
    import dataclasses

    import expressiongrid.engine.generation as generation
    from expressiongrid.output.images import read_parameters
    from expressiongrid.store import Store

    real = generation.generate

    def first_cell_fails(model, requests, *args, **kwargs):
        return [dataclasses.replace(r, ok=False, image=None, error="NaN/inf in the latents") if r.seed == 77 else r
                for r in real(model, requests, *args, **kwargs)]

    monkeypatch.setattr(generation, "generate", first_cell_fails)
    run = tmp_path / "vary"
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a portrait", "--seed", "77", "--width", "64", "--height", "64",
                                       "--steps", "2", "--x", "CFG Scale: 4,6", "--vary-seeds", "x", "--out", str(run)])
    assert result.exit_code == 1, result.output  # a cell failed
    cells = Store.open_existing(run).cells()
    assert sorted((c.status, c.seed) for c in cells) == [("done", 78), ("failed", 77)]
    text = read_parameters(next((run / "grids").glob("*.png")))
    assert parse_parameters(text)["Seed"] == "77"
    imported = import_source(next((run / "grids").glob("*.png")))
    study = study_from_dict(tomllib.loads(imported.toml), base_dir=tmp_path, source="imported")
    assert sorted(c.spec.seed for c in plan(study).cells) == [77, 78]


def test_a_script_other_than_xyz_or_axes_without_one_are_said_not_dropped():
    single = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model: tiny"
    matrix = import_parameters(single + ", Script: Prompt matrix")
    assert any(line.startswith("Script: Prompt matrix: import remakes X/Y/Z plots only") for line in matrix.unresolved)
    loose = import_parameters(single + ', X Type: Steps, X Values: "1,2"')
    assert any(line.startswith("X Type: without \"Script: X/Y/Z plot\"") for line in loose.unresolved)
    assert loose.study["columns"] == {"axis": "Nothing"}
    assert import_parameters(single).unresolved == []


def test_a_size_that_is_no_size_is_said_and_long_seeds_keep_their_digits():
    single = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: {size}, Model: tiny"
    odd = import_parameters(single.format(seed=5, size="768"))
    assert "Size: 768: expected WIDTHxHEIGHT such as 512x768; the study uses 512x512" in odd.unresolved
    assert import_parameters(single.format(seed=5, size="512x768")).study["sampling"]["height"] == 768
    long = import_parameters(single.format(seed="12345678901234567", size="512x512"))
    assert long.study["sampling"]["seed"] == 12345678901234567  # then refused as a seed by the study, as written
