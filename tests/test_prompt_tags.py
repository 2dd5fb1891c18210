"""Extra-network tags and embedding words in prompts, found by name in model folders (A1111's habits).

A fake A1111 tree (models/Lora with a subfolder, embeddings) of tiny-model files; studies use tags in the
study prompt, in expressions, as plain tag columns and in Prompt S/R values.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from expressiongrid.characters import demo
from expressiongrid import config as user_config
from expressiongrid.errors import StudyError
from expressiongrid.output.infotext import parse_parameters
from expressiongrid.study.plan import plan
from expressiongrid.run.runner import run_study
from expressiongrid.store import Store
from expressiongrid.study.study import load_study


@pytest.fixture(scope="module")
def webui(tmp_path_factory, tiny_pipeline):
    """models/Lora/anna.safetensors, models/Lora/styles/bob.safetensors, embeddings/EasyNeg.pt."""
    root = tmp_path_factory.mktemp("webui")
    (root / "models" / "Lora" / "styles").mkdir(parents=True)
    (root / "embeddings").mkdir()
    demo.save_kohya_lora(tiny_pipeline, root / "models" / "Lora" / "anna.safetensors", seed=1, strength=1.5)
    demo.save_kohya_lora(tiny_pipeline, root / "models" / "Lora" / "styles" / "bob.safetensors", seed=2, strength=1.5)
    demo.save_a1111_embedding(root / "embeddings" / "EasyNeg.pt",
                              demo.embedding_vectors(tiny_pipeline, n_vectors=3, seed=3, scale=8.0))
    return root


def _config(tmp_path: Path, paths: str) -> user_config.Config:
    path = tmp_path / "config.toml"
    path.write_text(f"[paths]\n{paths}\n", encoding="utf-8")
    return user_config.load(path)


@pytest.fixture(scope="module")
def folders(webui, tmp_path_factory):
    """The user configuration naming the fake A1111 install."""
    return _config(tmp_path_factory.mktemp("config"), f"webui = '{webui}'")


def _study(tmp_path: Path, body: str, folders: user_config.Config, name: str = "study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent("""
        [model]
        source = "tiny"
        [sampling]
        steps = 2
        width = 64
        height = 64
        seed = 11
    """) + textwrap.dedent(body), encoding="utf-8")
    return load_study(path, user_config=folders)


def _pixels(run_dir: Path) -> dict[tuple[str, str], np.ndarray]:
    with Store.open_existing(run_dir) as store:
        cells = store.cells("done")
    return {(c.col_id, c.row_id): np.asarray(Image.open(run_dir / c.file)) for c in cells}


def _parameters(run_dir: Path) -> dict[tuple[str, str], dict]:
    with Store.open_existing(run_dir) as store:
        return {(c.col_id, c.row_id): parse_parameters(c.parameters) for c in store.cells("done")}


def test_tag_column_and_character_file_column_give_identical_images(tmp_path, webui, folders):
    (tmp_path / "anna.toml").write_text(textwrap.dedent(f"""
        label = "Anna (file)"
        text = "<lora:anna:0.8>"
        [[lora]]
        file = "{webui / 'models' / 'Lora' / 'anna.safetensors'}"
        weight = 0.8
    """), encoding="utf-8")
    study = _study(tmp_path, """
        [prompt]
        positive = "a woman, {character}, [face: {expression}: 0.2]"
        reference = "1girl"
        [rows]
        axis = "expressions"
        items = ["smiling", "sad"]
        [columns]
        axis = "characters"
        reference = true
        files = ["anna.toml"]
        items = ["<lora:anna:0.8>"]
    """, folders)
    tag_column = study.columns.values[2]
    assert [(r.path, r.te_weight) for r in tag_column.value.loras] == [
        (webui / "models" / "Lora" / "anna.safetensors", 0.8)]
    summary = run_study(study, tmp_path / "out")
    assert summary.failed == 0
    pixels = _pixels(tmp_path / "out")
    for row in ("smiling", "sad"):
        assert np.array_equal(pixels[("anna", row)], pixels[("lora-anna-0-8", row)])
        assert not np.array_equal(pixels[("anna", row)], pixels[("reference", row)])


def test_prompt_sr_over_a_tag_sweeps_the_weight_and_the_lora_weight_axis_writes_the_weight_used(
        tmp_path, folders):
    body = """
        [prompt]
        positive = "a woman <lora:anna:1>, [face: {expression}: 0.2]"
        [rows]
        axis = "expressions"
        items = ["smiling"]
        [columns]
        axis = "%s"
        values = "%s"
    """
    sr = _study(tmp_path, body % ("Prompt S/R", "<lora:anna:1>, <lora:anna:0.5>, <lora:anna:0>"), folders,
                name="sr.toml")
    run_study(sr, tmp_path / "sr")
    weights = _study(tmp_path, body % ("LoRA weight", "1, 0.5"), folders, name="w.toml")
    run_study(weights, tmp_path / "w")
    sr_pixels, w_pixels = _pixels(tmp_path / "sr"), _pixels(tmp_path / "w")
    full, half, off = (sr_pixels[(c, "smiling")] for c in ("<lora:anna:1>", "<lora:anna:0.5>", "<lora:anna:0>"))
    assert not np.array_equal(full, half) and not np.array_equal(half, off)
    # the same LoRA at the same weight, reached by a tag or by the axis: the same image
    assert np.array_equal(w_pixels[("0.5", "smiling")], half)
    assert np.array_equal(w_pixels[("1.0", "smiling")], full)
    params = _parameters(tmp_path / "w")
    assert "<lora:anna:0.5>" in params[("0.5", "smiling")]["Prompt"]
    assert "<lora:anna:1>" not in params[("0.5", "smiling")]["Prompt"]
    assert "anna" in params[("0.5", "smiling")]["Lora hashes"]
    sr_params = _parameters(tmp_path / "sr")
    assert "<lora:anna:0.5>" in sr_params[("<lora:anna:0.5>", "smiling")]["Prompt"]


def test_embedding_words_activate_files_from_the_embeddings_folder(tmp_path, folders):
    body = """
        [prompt]
        positive = "a woman, [face: {expression}: 0.2]"
        negative = "EasyNeg, blurry"
        [rows]
        axis = "expressions"
        items = ["smiling"]
        [columns]
        axis = "Nothing"
    """
    with_file = _study(tmp_path, body, folders, name="a.toml")
    (cell,) = plan(with_file).cells
    assert [(e.name, e.token) for e in cell.spec.networks.embeddings] == [("EasyNeg", "easyneg")]
    run_study(with_file, tmp_path / "a")
    without = _study(tmp_path, body, _config(tmp_path, f"loras = '{folders.search_folders('loras')[0]}'"),
                     name="b.toml")
    run_study(without, tmp_path / "b")
    (a,), (b,) = _pixels(tmp_path / "a").values(), _pixels(tmp_path / "b").values()
    assert not np.array_equal(a, b)
    (params,) = _parameters(tmp_path / "a").values()
    assert params["TI hashes"].startswith("EasyNeg: ")  # A1111's name: the file stem, as written on disk


def test_names_without_files_and_unsupported_tags_are_all_reported_before_anything_runs(tmp_path, folders):
    body = """
        [prompt]
        positive = "a woman <lora:nobody:1> <hypernet:old:1>, {character}, [face: {expression}: 0.2]"
        [rows]
        axis = "expressions"
        items = ["smiling", "sad <lora:Anna:1>"]
        [columns]
        axis = "characters"
        reference = true
        items = ["<lora:anna:0.8>"]
    """
    with pytest.raises(StudyError) as info:
        plan(_study(tmp_path, body, folders))
    text = "\n".join(info.value.problems)
    assert "'nobody'" in text and "nobody.safetensors" in text and str(folders.search_folders("loras")[0]) in text
    assert "<hypernet:old:1>" in text and "not supported" in text
    assert "'Anna'" in text and "did you mean 'anna'?" in text
    assert len(info.value.problems) == 3  # each distinct problem once, not once per cell


def test_character_columns_from_globs_over_the_lora_folders(tmp_path, folders):
    study = _study(tmp_path, """
        [prompt]
        positive = "a woman, {character}"
        [rows]
        axis = "Nothing"
        [columns]
        axis = "characters"
        loras = ["styles/*", "ann?"]
    """, folders)
    assert [v.label for v in study.columns.values] == ["bob", "anna"]
    with pytest.raises(StudyError) as info:
        _study(tmp_path, """
            [prompt]
            positive = "a woman, {character}"
            [rows]
            axis = "Nothing"
            [columns]
            axis = "characters"
            loras = ["carl*"]
        """, folders)
    assert any("no lora file matches 'carl*'" in p and str(folders.search_folders("loras")[0]) in p for p in info.value.problems)


def _cli(args, config_file: Path, monkeypatch):
    from click.testing import CliRunner

    from expressiongrid.cli import main

    monkeypatch.setenv("EXPRESSIONGRID_CONFIG", str(config_file))
    monkeypatch.setenv("EXPRESSIONGRID_NO_PROGRESS", "1")
    return CliRunner().invoke(main, args)


def test_dry_run_through_the_config_lists_columns_and_every_missing_name(tmp_path, webui, monkeypatch):
    config_file = tmp_path / "config.toml"
    config_file.write_text(f"[paths]\nwebui = '{webui}'\n", encoding="utf-8")
    study = tmp_path / "s.toml"
    study.write_text(textwrap.dedent("""
        [model]
        source = "tiny"
        [sampling]
        steps = 2
        width = 64
        height = 64
        [prompt]
        positive = "a woman, {character}, [face: {expression}: 0.2]"
        negative = "easyneg"
        reference = "1girl"
        [rows]
        axis = "expressions"
        items = ["smiling", "sad (very"]
        [columns]
        axis = "characters"
        reference = true
        items = ["<lora:anna:0.8>", {label = "Bob", text = "<lora:bob:0.6>, bobchar"}]
    """), encoding="utf-8")
    result = _cli(["run", str(study), "--dry-run"], config_file, monkeypatch)
    assert result.exit_code == 0, result.output
    lora_dir = webui / "models" / "Lora"
    assert f"<lora:anna:0.8>: text '<lora:anna:0.8>', files: {lora_dir / 'anna.safetensors'} (LoRA 0.8)" in result.output
    assert f"Bob: text '<lora:bob:0.6>, bobchar', files: {lora_dir / 'styles' / 'bob.safetensors'} (LoRA 0.6)" \
        in result.output
    assert "reference: text '1girl', no files" in result.output
    # A1111 would weight everything after "(" silently: said once per distinct prompt (3 columns use it)
    warnings = [line for line in result.output.splitlines() if "never closed" in line]
    assert len(warnings) == 3 and all(line.startswith("warning: prompt ") for line in warnings)

    study.write_text(study.read_text().replace('"sad (very"', '"sad <lora:carl:1>", "<hypernet:x:1> grin"'))
    result = _cli(["run", str(study), "--dry-run"], config_file, monkeypatch)
    assert result.exit_code == 2
    assert "no LoRA file named 'carl' (carl.safetensors/carl.pt/carl.ckpt)" in result.output
    assert f"searched {lora_dir}" in result.output
    assert "<hypernet:x:1>: hypernetworks are not supported" in result.output


def test_xyz_prompt_tags_and_prompt_warnings_reach_run_log(tmp_path, webui, monkeypatch):
    config_file = tmp_path / "config.toml"
    config_file.write_text(f"[paths]\nwebui = '{webui}'\n", encoding="utf-8")
    out = tmp_path / "xyz"
    result = _cli(["xyz", "--prompt", "a cat <lora:anna:1> [dog:fox:1.0]", "--steps", "2", "--width", "64",
                   "--height", "64", "--seed", "3", "--x", "Prompt S/R: <lora:anna:1>, <lora:anna:0.25>",
                   "--sampler", "DPM++ 2M Karras", "--schedule-type", "Exponential",
                   "--out", str(out)], config_file, monkeypatch)
    assert result.exit_code == 0, result.output
    assert result.output.count("edit-never-after") == 2  # two distinct prompts, each said once
    log = (out / "run.log").read_text(encoding="utf-8")
    assert log.count("edit-never-after") == 2
    # every warning run printed is in the log too (one list): here the schedule type the sampler overrides
    assert result.output.count("names its own schedule type") == log.count("names its own schedule type") == 1
    with Store.open_existing(out) as store:
        prompts = sorted(parse_parameters(c.parameters)["Prompt"] for c in store.cells("done"))
    assert prompts == ["a cat <lora:anna:0.25> [dog:fox:1.0]", "a cat <lora:anna:1> [dog:fox:1.0]"]


def test_a_broken_file_named_by_a_tag_is_refused_before_the_run(tmp_path, webui):
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    config = _config(tmp_path, f"loras = '{lora_dir}'")
    study = _study(tmp_path, """
        [prompt]
        positive = "a woman <lora:broken:1>"
        [rows]
        axis = "Nothing"
        [columns]
        axis = "Nothing"
    """, config)
    with pytest.raises(StudyError, match="named in a prompt: .*broken.safetensors"):
        plan(study)
