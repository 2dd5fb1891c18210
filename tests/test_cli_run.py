"""`run`, `xyz`, `demo`, `runs list/show` through click's CliRunner: exit codes, output, database rows, files."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from expressiongrid.cli import main

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SEED_PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: {expression}: 0.2], RAW photo, {character}"


@pytest.fixture(scope="module")
def demo_chars(tmp_path_factory):
    """The two generated demo characters (a LoRA and an embedding) for the tiny model, made once."""
    from expressiongrid.characters.demo import make_demo_characters
    from expressiongrid.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("chars")
    make_demo_characters(build_tiny_pipeline(), folder)
    return folder


def _study(tmp_path: Path, chars: Path, rows=("neutral face expression", "smiling"), steps=3) -> Path:
    items = ", ".join(json.dumps(r) for r in rows)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(f"""
        name = "mini"
        [model]
        source = "tiny"
        [sampling]
        steps = {steps}
        width = 64
        height = 64
        seed = 11
        [prompt]
        positive = "{SEED_PROMPT}"
        negative = "naked, illustration, 3d, drawing, cartoon, anime, 2girls"
        reference = "1girl"
        [rows]
        axis = "expressions"
        items = [{items}]
        [columns]
        axis = "characters"
        reference = true
        files = ["{chars.as_posix()}/demo-lora.toml", "{chars.as_posix()}/demo-embedding.toml"]
    """), encoding="utf-8")
    return path


def _rows(out: Path, sql: str):
    conn = sqlite3.connect(out / "run.sqlite")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_run_makes_cells_and_grid_then_resumes_with_nothing_new(tmp_path, demo_chars):
    runner = CliRunner()
    study = _study(tmp_path, demo_chars)
    out = tmp_path / "out"
    result = runner.invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "plan: 2 rows x 3 columns = 6 cells" in result.output
    assert "grid: 1 grid page of " in result.output  # the grid's pixel size, known before generating
    assert "made 6, skipped 0 (already done), failed 0" in result.output
    assert "6/6" in result.stderr and "img/s" in result.stderr  # the progress bar: done, rate, ETA
    grid = out / "grids" / "mini.png"
    assert f"grid: {grid}" in result.output and grid.is_file()
    assert f"database: {out / 'run.sqlite'}" in result.output
    assert "model tiny on cpu: fp32, not compiled" in (out / "run.log").read_text()

    rows = _rows(out, "SELECT status, seed, file, row_label, col_label, character_id, prompt FROM cells ORDER BY col_index, row_index")
    assert [r[0] for r in rows] == ["done"] * 6
    assert {r[1] for r in rows} == {11}
    assert [r[4] for r in rows] == ["reference", "reference", "demo LoRA", "demo LoRA", "demo embedding", "demo embedding"]
    assert rows[0][6].endswith("RAW photo, 1girl")
    assert "<lora:demo_lora:1>" in rows[2][6]
    for r in rows:
        with Image.open(out / r[2]) as im:
            assert im.size == (64, 64)
            assert "Negative prompt: naked" in im.info["parameters"]
    with Image.open(grid) as im:
        assert "X Type: Character" in im.info["parameters"]

    again = runner.invoke(main, ["run", str(study), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "6 already done" in again.output
    assert "made 0, skipped 6" in again.output
    assert _rows(out, "SELECT COUNT(*) FROM runs")[0][0] == 2


def test_adding_a_row_makes_only_the_new_cells(tmp_path, demo_chars):
    runner = CliRunner()
    out = tmp_path / "out"
    assert runner.invoke(main, ["run", str(_study(tmp_path, demo_chars)), "--out", str(out)]).exit_code == 0
    files_before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.png")}
    bigger = _study(tmp_path, demo_chars, rows=("neutral face expression", "smiling", "sad crying"))
    result = runner.invoke(main, ["run", str(bigger), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "made 3, skipped 6" in result.output
    assert all(p.stat().st_mtime_ns == t for p, t in files_before.items())  # old cells untouched
    assert _rows(out, "SELECT COUNT(*) FROM cells WHERE status = 'done'")[0][0] == 9


def test_damaged_files_are_redone(tmp_path, demo_chars):
    runner = CliRunner()
    out = tmp_path / "out"
    study = _study(tmp_path, demo_chars)
    assert runner.invoke(main, ["run", str(study), "--out", str(out)]).exit_code == 0
    files = [out / f for (f,) in _rows(out, "SELECT file FROM cells ORDER BY key")]
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:100])  # as if a crash cut the write short
    result = runner.invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "made 2, skipped 4" in result.output
    assert "repaired before the run: missing or broken files 2" in result.output
    with Image.open(files[1]) as im:
        im.load()


def test_invalid_study_reports_every_problem_and_exits_2(tmp_path, demo_chars):
    study = _study(tmp_path, demo_chars)
    text = study.read_text().replace("steps = 3", 'steps = "many"').replace("width = 64", "width = 65")
    text = text.replace('reference = "1girl"', 'reference = "1girl"\ncolour = "red"')
    study.write_text(text)
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "3 problems" in result.output
    assert "sampling.steps: expected an integer" in result.output
    assert "sampling.width: expected a multiple of 8" in result.output
    assert "prompt.colour: unknown key" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing created before the study is valid


def test_failed_column_is_recorded_and_exit_code_is_1(tmp_path, demo_chars, monkeypatch):
    from expressiongrid.characters.activation import CharacterActivator
    from expressiongrid.errors import CharacterError

    real_prepare = CharacterActivator.prepare

    def prepare(self, chars):
        if any(ch.label == "demo LoRA" for ch in chars):
            raise CharacterError("demo_lora.safetensors: file is corrupt (unexpected end of data)")
        return real_prepare(self, chars)

    monkeypatch.setattr(CharacterActivator, "prepare", prepare)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(_study(tmp_path, demo_chars)), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "made 4, skipped 0 (already done), failed 2" in result.output
    assert "failed: demo LoRA / neutral face expression: character 'demo LoRA'" in result.stderr
    assert "run incomplete: 2 of 6 images failed" in result.stderr
    assert (out / "grids" / "mini.png").is_file()  # the grid is still composed, with marked cells
    failed = _rows(out, "SELECT col_label, error FROM cells WHERE status = 'failed'")
    assert len(failed) == 2 and all(r[0] == "demo LoRA" and "corrupt" in r[1] for r in failed)
    assert _rows(out, "SELECT status FROM runs")[0][0] == "incomplete"

    # the file is fixed: the next run retries only the failed cells
    monkeypatch.setattr(CharacterActivator, "prepare", real_prepare)
    again = CliRunner().invoke(main, ["run", str(_study(tmp_path, demo_chars)), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "made 2, skipped 4" in again.output


def test_dry_run_loads_nothing(tmp_path, demo_chars):
    result = CliRunner().invoke(main, ["run", str(_study(tmp_path, demo_chars)), "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: nothing generated" in result.output
    assert "model: tiny on cpu, fp32, not compiled" in result.output  # dtype auto = fp32 on the CPU
    assert not (tmp_path / "o").exists()


def test_dry_run_json_prints_the_plan_with_grid_pages_and_sizes(tmp_path, demo_chars):
    rows = [f"expression {i}" for i in range(9)]
    study = _study(tmp_path, demo_chars, rows=rows)
    text = study.read_text(encoding="utf-8").replace("width = 64", "width = 512").replace("height = 64", "height = 512")
    study.write_text(text + '\n[output]\naxis_titles = true\ncaption = true\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "o"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["rows"], plan["columns"], plan["cells"]) == (9, 3, 27)
    assert plan["grid_plan"]["pages"] == 1 and plan["grid_plan"]["page_sizes"] == [plan["grid_size"]]
    assert plan["upload_copy"]["single_image"] and plan["upload_copy"]["format"] == "jpeg"
    assert not (tmp_path / "o").exists()

    study.write_text(study.read_text(encoding="utf-8") + "max_cells_per_page = 9\n", encoding="utf-8")
    split = json.loads(CliRunner().invoke(main, ["run", str(study), "--dry-run", "--json"]).stdout)
    assert split["grid_plan"]["pages"] == 3
    assert all((c["rows"][1] - c["rows"][0]) * (c["columns"][1] - c["columns"][0]) <= 9
               for c in split["grid_plan"]["page_cells"])
    assert len(split["grid_plan"]["page_sizes"]) == 3

    refused = CliRunner().invoke(main, ["run", str(study), "--json"])
    assert refused.exit_code == 2 and "--dry-run" in refused.output


def test_a_label_no_font_can_draw_is_a_warning_before_anything_runs(tmp_path, demo_chars):
    study = _study(tmp_path, demo_chars, rows=("neutral face expression", "smiling GLYPH"))
    study.write_text(study.read_text(encoding="utf-8").replace("GLYPH", "\U00013000"), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "no installed font can draw" in result.stderr and "U+13000" in result.stderr
    assert "[output] font" in result.stderr
    as_json = CliRunner().invoke(main, ["run", str(study), "--out", str(tmp_path / "o"), "--dry-run", "--json"])
    assert any("no installed font can draw" in w for w in json.loads(as_json.stdout)["warnings"])


@pytest.mark.parametrize("title", [None, "How a smile changes as the CFG scale and the number of sampling steps grow"])
def test_dry_run_plans_the_page_size_the_run_draws_with_a_page_axis(tmp_path, title):
    # Each page's grid carries a title: the study's title and the page's label ("Steps: 1"), or the label
    # alone when the study has no title.
    study = tmp_path / "paged.toml"
    study.write_text(textwrap.dedent(f"""
        name = "paged"
        [model]
        source = "tiny"
        [sampling]
        steps = 1
        width = 64
        height = 48
        seed = 5
        [prompt]
        positive = "a woman, {{expression}}"
        [rows]
        axis = "expressions"
        items = ["smiling", "sad"]
        [columns]
        axis = "CFG Scale"
        values = "5,9"
        [pages]
        axis = "Steps"
        values = "1,2"
        [output]
    """) + (f"title = {json.dumps(title)}\n" if title else ""), encoding="utf-8")
    out = tmp_path / "o"
    dry = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.stdout)
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    drawn = []
    for page in (1, 2):
        with Image.open(out / "grids" / f"paged-page{page}.png") as im:
            drawn.append(list(im.size))
    assert planned["grid_size"] == drawn[0] and planned["grid_plan"]["page_sizes"] == [drawn[0]]
    assert planned["page_grid_sizes"] == drawn


def test_missing_study_file_is_a_one_line_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: study file not found: {tmp_path / 'nope.toml'}"]


def test_xyz_command_runs_a1111_plot(tmp_path):
    out = tmp_path / "xyz"
    args = ["xyz", "--prompt", "a photo of a cat, masterpiece", "--negative-prompt", "blurry, cat ears",
            "--x", "Prompt S/R: cat, dog", "--y", "Steps: 2,3", "--seed", "1000", "--vary-seeds", "y",
            "--width", "64", "--height", "48", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "X/Y/Z plot will create 4 images on 1 2x2 grid. (Total steps to process: 10)" in result.output
    rows = _rows(out, "SELECT col_index, row_index, prompt, negative_prompt, seed, steps FROM cells "
                      "ORDER BY row_index, col_index")
    assert rows == [
        (0, 0, "a photo of a cat, masterpiece", "blurry, cat ears", 1000, 2),
        (1, 0, "a photo of a dog, masterpiece", "blurry, dog ears", 1000, 2),
        (0, 1, "a photo of a cat, masterpiece", "blurry, cat ears", 1001, 3),
        (1, 1, "a photo of a dog, masterpiece", "blurry, dog ears", 1001, 3),
    ]
    with Image.open(out / "grids" / "xyz.png") as im:
        params = im.info["parameters"]
    assert 'X Type: Prompt S/R, X Values: "cat, dog", Y Type: Steps, Y Values: "2,3"' in params


def test_a_reference_text_with_no_reference_column_to_go_into_is_said(tmp_path):
    def warned(*args):
        result = CliRunner().invoke(main, ["xyz", "--dry-run", "--out", str(tmp_path), "--reference", "1girl", *args])
        assert result.exit_code == 0, result.output
        return [line for line in result.stderr.splitlines() if "reference text '1girl'" in line]

    assert len(warned("--prompt", "a cat", "--x", "Steps: 1,2")) == 1
    assert warned("--prompt", "a {character}", "--x", "Character: reference") == []


def test_a_page_label_is_checked_like_row_and_column_labels(tmp_path):
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a cat", "--x", "Steps: 1,2", "--z",
                                       "Prompt S/R: cat, \u202edog", "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: grid label '\\u202edog': its direction control character(s) U+202E are left out" in result.stderr


def test_xyz_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    bad_flag = runner.invoke(main, ["xyz", "--prompt", "a cat", "--x", "10,20"])
    assert bad_flag.exit_code == 2 and 'expected "AXIS: VALUES"' in bad_flag.output
    not_found = runner.invoke(main, ["xyz", "--prompt", "a cat", "--x", "Prompt S/R: zebra, horse",
                                     "--out", str(tmp_path / "o")])
    assert not_found.exit_code == 2
    assert "'zebra'" in not_found.output and "negative prompt" in not_found.output
    bad_range = runner.invoke(main, ["xyz", "--prompt", "a cat", "--x", "Steps: 1-5 (2)", "--out", str(tmp_path / "o")])
    assert bad_range.exit_code == 2 and "--x values" in bad_range.output
    no_axis = runner.invoke(main, ["xyz", "--prompt", "a cat"])
    assert no_axis.exit_code == 2


def test_runs_list_and_show(tmp_path, demo_chars):
    runner = CliRunner()
    out = tmp_path / "runs" / "mini"
    assert runner.invoke(main, ["run", str(_study(tmp_path, demo_chars)), "--out", str(out)]).exit_code == 0

    listed = runner.invoke(main, ["runs", "list", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert str(out) in listed.output and " 6 " in listed.output and "done" in listed.output

    shown = runner.invoke(main, ["runs", "show", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "cells: 6 (6 done, 0 failed, 0 pending)" in shown.output
    assert "made 6, skipped 0, failed 0" in shown.output

    as_json = runner.invoke(main, ["runs", "show", str(out), "--json"])
    data = json.loads(as_json.output)
    assert data["counts"] == {"pending": 0, "done": 6, "failed": 0}
    assert len(data["cells"]) == 6
    cell = data["cells"][0]
    assert cell["status"] == "done" and cell["seed"] == 11 and Path(cell["path"]).is_file()
    assert cell["seconds"] is not None and "Steps: 3" in cell["parameters"]
    assert [r["status"] for r in data["runs"]] == ["done"]
    assert data["study"]["rows"]["kind"] == "expressions"

    missing = runner.invoke(main, ["runs", "show", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no run in" in missing.output


@pytest.mark.slow
def test_demo_makes_its_27_cells_in_a_fresh_interpreter(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "demo"
    # a fresh interpreter, as a user runs it: imports, demo characters, model, 27 images, grid
    result = subprocess.run([sys.executable, "-m", "expressiongrid", "demo", "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plan: 9 rows x 3 columns = 27 cells" in result.stdout
    assert "made 27, skipped 0 (already done), failed 0" in result.stdout
    # no third-party chatter (optional torchvision notices, diffusers' empty fp32-modules warning)
    assert "torchvision" not in result.stderr and "kept in float32" not in result.stderr, result.stderr
    assert f"grid: {out / 'grids' / 'demo.png'}" in result.stdout
    labels = _rows(out, "SELECT DISTINCT col_label FROM cells ORDER BY col_index")
    assert [l for (l,) in labels] == ["reference", "demo LoRA", "demo embedding"]
    kinds = {c: p for c, p in _rows(out, "SELECT col_label, parameters FROM cells WHERE row_index = 0")}
    assert "Lora hashes" in kinds["demo LoRA"] and "TI hashes" in kinds["demo embedding"]
    assert "Lora hashes" not in kinds["reference"]
    assert (out / "grids" / "demo.png").is_file() and (out / "grids" / "demo.upload.jpg").is_file()
    # the characters change the picture: columns differ from the reference on the same seed
    cells = {c: f for c, f in _rows(out, "SELECT col_label, file FROM cells WHERE row_index = 0")}
    ref = Image.open(out / cells["reference"]).tobytes()
    assert Image.open(out / cells["demo LoRA"]).tobytes() != ref
    assert Image.open(out / cells["demo embedding"]).tobytes() != ref


def test_corrupt_character_file_fails_its_own_column(tmp_path, demo_chars):
    import shutil

    chars = tmp_path / "chars"
    shutil.copytree(demo_chars, chars)
    (chars / "demo_lora.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    study = _study(tmp_path, chars)
    out = tmp_path / "out"

    strict = CliRunner().invoke(main, ["run", str(study), "--out", str(out), "--strict"])
    assert strict.exit_code == 2, strict.output
    assert "columns.files" in strict.output and "demo_lora.safetensors" in strict.output

    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "warning: column 'demo LoRA' will fail" in result.stderr
    assert "made 4, skipped 0 (already done), failed 2" in result.stdout
    assert "run incomplete" in result.stderr
    failed = _rows(out, "SELECT col_label, error, file FROM cells WHERE status = 'failed'")
    assert [r[0] for r in failed] == ["demo LoRA", "demo LoRA"]
    assert all("demo_lora.safetensors" in r[1] and r[2] is None for r in failed)
    # the grid marks the failed cells (grey with a red cross) instead of leaving holes
    with Image.open(out / "grids" / "mini.png") as im:
        rgb = im.convert("RGB")
        grey = sum(1 for px in rgb.get_flattened_data() if px == (0x9A, 0x9A, 0x9A))  # the failed-cell background
    assert grey > 2 * 64 * 64 // 2


def test_xyz_with_expression_and_character_axes(tmp_path, demo_chars):
    out = tmp_path / "xyz"
    result = CliRunner().invoke(main, [
        "xyz", "--prompt", SEED_PROMPT, "--reference", "1girl", "--steps", "2", "--width", "64", "--height", "64",
        "--x", f"Character: reference, {demo_chars / 'demo-embedding.toml'}", "--y", "Expression: smiling, sad",
        "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out, "SELECT col_label, row_label, prompt FROM cells ORDER BY col_index, row_index")
    assert [(r[0], r[1]) for r in rows] == [("reference", "smiling"), ("reference", "sad"),
                                           ("demo embedding", "smiling"), ("demo embedding", "sad")]
    assert rows[0][2].endswith("lips: smiling: 0.2], RAW photo, 1girl")
    assert "TI hashes" in _rows(out, "SELECT parameters FROM cells WHERE col_index = 1")[0][0]


def test_cells_and_grid_link_civitai_resources(tmp_path, demo_chars):
    import shutil

    from expressiongrid.output.images import read_parameters
    from expressiongrid.output.infotext import parse_parameters

    chars = tmp_path / "chars"
    shutil.copytree(demo_chars, chars)
    lora_toml = chars / "demo-lora.toml"
    lora_toml.write_text(lora_toml.read_text() + "\n[source]\ncivitai = 4242\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(_study(tmp_path, chars)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (params,) = _rows(out, "SELECT parameters FROM cells WHERE col_label = 'demo LoRA' LIMIT 1")[0:1]
    cell = parse_parameters(params[0])
    assert cell["Civitai resources"] == [{"type": "lora", "weight": 1.0, "modelVersionId": 4242}]
    assert set(cell["Hashes"]) == {"lora:demo_lora"}
    grid = parse_parameters(read_parameters(out / "grids" / "mini.png"))
    assert grid["Civitai resources"] == [{"type": "lora", "weight": 1.0, "modelVersionId": 4242}]
    # every resource of the grid; an embedding under A1111's name for it (its file stem, not the token used here)
    assert set(grid["Hashes"]) == {"lora:demo_lora", "embed:demo_embedding"}
    upload = parse_parameters(read_parameters(out / "grids" / "mini.upload.jpg"))  # EXIF UserComment
    assert upload["Hashes"] == grid["Hashes"]


def test_a_study_name_cannot_write_outside_the_output_folder(tmp_path, demo_chars):
    """The study name becomes the grid's file name: a name like ../../x must not escape grids/."""
    study = _study(tmp_path, demo_chars, rows=("smiling",), steps=2)
    study.write_text(study.read_text().replace('name = "mini"', 'name = "../../escaped/<b>x</b>"'))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "escaped").exists()
    grids = sorted(p.name for p in (out / "grids").glob("*.png"))
    assert grids == ["escaped_b_x_b.png"]


def test_a_resumed_random_seed_run_opens_the_run_store_once_before_the_run(tmp_path, demo_chars, monkeypatch):
    """The dry run's "already done" count and the earlier run's random seed come from one opening."""
    import expressiongrid.run.launch as launch
    import expressiongrid.store.runs as runs

    study = _study(tmp_path, demo_chars, steps=2)
    study.write_text(study.read_text(encoding="utf-8").replace("seed = 11", "seed = -1"), encoding="utf-8")
    out = tmp_path / "out"
    opens: list[Path] = []
    real_connect, real_copy, real_launch = runs.connect, runs.read_only_copy, launch.run_launched

    def counting_connect(path, **kwargs):
        opens.append(Path(path))
        return real_connect(path, **kwargs)

    def counting_copy(path, **kwargs):  # how the run store is read before a run: nothing written there
        opens.append(Path(path))
        return real_copy(path, **kwargs)

    opens_before_run: list[int] = []

    def counting_launch(*args, **kwargs):
        opens_before_run.append(len(opens))
        return real_launch(*args, **kwargs)

    monkeypatch.setattr(runs, "connect", counting_connect)
    monkeypatch.setattr(runs, "read_only_copy", counting_copy)
    monkeypatch.setattr(launch, "run_launched", counting_launch)
    run = ["run", str(study), "--out", str(out)]
    env = {"EXPRESSIONGRID_NO_PROGRESS": "1"}

    first = CliRunner().invoke(main, run, env=env)
    assert first.exit_code == 0, first.output
    assert opens_before_run == [0]  # a new folder: nothing to open before the run
    seeds = _rows(out, "SELECT DISTINCT seed FROM cells")
    assert len(seeds) == 1

    opens.clear()
    dry = CliRunner().invoke(main, [*run, "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert f"6 images, 6 already done in {out}" in dry.output
    assert opens == [out / "run.sqlite"]

    opens.clear()
    as_json = CliRunner().invoke(main, [*run, "--dry-run", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["already_done"] == 6
    assert len(opens) == 1

    opens.clear()
    again = CliRunner().invoke(main, run, env=env)
    assert again.exit_code == 0, again.output
    assert opens_before_run == [0, 1]
    assert "made 0, skipped 6 (already done)" in again.output  # the earlier random seed, so the same cells
    assert _rows(out, "SELECT DISTINCT seed FROM cells") == seeds
    assert _rows(out, "SELECT COUNT(*) FROM runs")[0][0] == 2


def test_runs_list_and_show_print_a_hostile_study_name_and_labels_terminal_safe(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(textwrap.dedent("""
        name = "x\\u001b]0;retitled\\u0007y"
        [model]
        source = "tiny"
        [sampling]
        steps = 1
        width = 64
        height = 64
        [prompt]
        positive = "a cat, {expression}"
        [rows]
        axis = "expressions"
        values = ["red\\u001b[31m smile", "calm"]
        [columns]
        axis = "Nothing"
    """), encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "runs" / "r"
    assert runner.invoke(main, ["run", str(study), "--out", str(out)]).exit_code == 0
    listed = runner.invoke(main, ["runs", "list", str(tmp_path / "runs")])
    shown = runner.invoke(main, ["runs", "show", str(out)])
    for result in (listed, shown):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "x\\x1b]0;retitled\\x07y" in result.output
    # the escaped label is padded like any other, so the seed column stays aligned
    cell_lines = [line for line in shown.output.splitlines() if line.lstrip().startswith("0 ")]
    assert len(cell_lines) == 2 and len({line.index(" done ") for line in cell_lines}) == 1, cell_lines


def test_the_report_leaves_out_the_grid_of_an_earlier_version_of_the_study(tmp_path, demo_chars):
    runner = CliRunner()
    study = _study(tmp_path, demo_chars, rows=("neutral face expression",), steps=2)
    out = tmp_path / "out"
    assert runner.invoke(main, ["run", str(study), "--out", str(out)]).exit_code == 0
    study.write_text(study.read_text(encoding="utf-8").replace('name = "mini"', 'name = "mini-v2"'), encoding="utf-8")
    assert runner.invoke(main, ["run", str(study), "--out", str(out)]).exit_code == 0
    assert sorted(p.name for p in (out / "grids").glob("*.png")) == ["mini-v2.png", "mini.png"]
    result = runner.invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: 1 older grid in grids/ left out (not written by the latest run" in result.output
    assert "post bundle: 1 image in" in result.output  # the current grid only: no stale grid to upload
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "<figcaption>mini-v2.png</figcaption>" in html and "<figcaption>mini.png</figcaption>" not in html
