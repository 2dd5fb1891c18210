"""`xyz` planning replays A1111's X/Y/Z runs (../shared/compat/xyz_runs.jsonl): cell order, seeds, prompts."""

from __future__ import annotations

import pytest

from conftest import load_jsonl
from expressiongrid.errors import StudyError, UsageError
from expressiongrid.study.plan import cell_order, loop_order, plan
from expressiongrid.output.infotext import grid_seed_params
from expressiongrid.output.run_grids import grid_axes
from expressiongrid.study.xyz import split_axis_flag, xyz_study

RUNS = load_jsonl("xyz_runs.jsonl")
DEFAULT_BASE = {"prompt": "a photo of a cat, masterpiece", "negative_prompt": "blurry, cat ears", "seed": 1000,
                "steps": 20, "cfg_scale": 7.0, "width": 64, "height": 48}


def _study(case):
    inp, base = case["input"], case.get("base", DEFAULT_BASE)
    kwargs = dict(prompt=base["prompt"], negative_prompt=base["negative_prompt"], seed=base["seed"],
                  steps=base["steps"], cfg_scale=base["cfg_scale"], width=base["width"], height=base["height"],
                  margin=inp.get("margin_size", 0))
    for slot in "xyz":
        if slot in inp:
            kwargs[slot] = tuple(inp[slot])
    if "vary" in inp:
        kwargs["vary_seeds"] = tuple(inp["vary"])
    if any(inp.get(slot, [""])[0] == "Schedule type" for slot in "xyz"):
        # A1111 pairs any sampler with any schedule type; diffusers' ancestral Euler has no Karras sigmas, so
        # these cases use Euler (nothing the case expects depends on the sampler).
        kwargs["sampler"] = "Euler"
    return xyz_study(check_files=False, **kwargs)


@pytest.mark.parametrize("case", [c for c in RUNS if "expected" in c], ids=lambda c: c["name"])
def test_xyz_run_matches_a1111(case):
    exp = case["expected"]
    study = _study(case)
    p = plan(study)
    assert [[c.col_index, c.row_index, c.page] for c in p.cells] == exp["order"]
    assert [v.label for v in study.columns.values] == exp["labels"]["x"]
    assert [v.label for v in study.rows.values] == exp["labels"]["y"]
    pages = study.pages.values if study.pages is not None else []
    assert [v.label for v in pages] == [lab for lab in exp["labels"]["z"] if lab]
    assert list(p.loop_order[:2]) == exp["loop"]
    for cell, call in zip(p.cells, exp["calls"], strict=True):
        s = cell.spec
        assert (s.prompt, s.negative_prompt, s.seed) == (call["prompt"], call["negative_prompt"], call["seed"])
        assert (s.steps, s.cfg_scale, s.width, s.height) == (call["steps"], call["cfg_scale"], call["width"],
                                                             call["height"])
        overrides = call["override_settings"]
        if "CLIP_stop_at_last_layers" in overrides:
            assert s.model.clip_skip == overrides["CLIP_stop_at_last_layers"]
        if "sd_model_checkpoint" in overrides:
            assert s.model.source == overrides["sd_model_checkpoint"]
    assert [c.spec.seed for c in sorted(p.cells, key=lambda c: (c.page, c.row_index, c.col_index))] == \
        exp["result_all_seeds"]
    # the grid's infotext keys A1111 adds, from the definition the run's grids are written with; beyond them
    # only the seed-policy keys A1111 has none for
    keys = grid_axes(study.info())
    a1111 = exp["result_infotexts"][0]
    assert {k: keys[k] for k in a1111} == a1111
    sampling = study.sampling
    assert {k: v for k, v in keys.items() if k not in a1111} == grid_seed_params(
        sampling.seed_policy, sampling.vary, sampling.seeds_per_cell)


@pytest.mark.parametrize("case", [c for c in RUNS if "error" in c], ids=lambda c: c["name"])
def test_xyz_errors_are_clear_before_anything_runs(case):
    with pytest.raises(StudyError) as err:
        plan(_study(case))
    # A1111: "Prompt S/R did not find zebra in prompt or negative prompt." -> ours names the text and the fix
    text = str(err.value) + " ".join(err.value.problems)
    search = case["input"]["x"][1].split(",")[0]
    assert search in text and "negative prompt" in text


def test_prompt_sr_replaces_in_prompt_and_negative_in_xyz_order():
    study = xyz_study(check_files=False, prompt="a cat, cat ears", negative_prompt="cat, blurry ears",
                      x=("Prompt S/R", "cat, dog"), y=("Prompt S/R", "ears, cat ears"), seed=5, width=64, height=64)
    p = plan(study)
    got = {(c.col_index, c.row_index): (c.spec.prompt, c.spec.negative_prompt) for c in p.cells}
    assert got[(0, 0)] == ("a cat, cat ears", "cat, blurry ears")  # first value: identity
    assert got[(1, 0)] == ("a dog, dog ears", "dog, blurry ears")  # every occurrence, negative too
    # Y is applied after X: the "cat" that Y adds is not turned into "dog"
    assert got[(1, 1)] == ("a dog, dog cat ears", "dog, blurry cat ears")
    # A1111 checks the search text per cell: Y's "dog" is missing where X kept "cat" -> error, nothing runs
    with pytest.raises(StudyError, match="'dog'"):
        plan(xyz_study(check_files=False, prompt="a cat", x=("Prompt S/R", "cat, dog"), y=("Prompt S/R", "dog, cow")))


def test_loop_order_rules():
    assert loop_order(0, 0, 0) == ("z", "y", "x")
    assert loop_order(1, 0, 0.7) == ("x", "z", "y")  # checkpoint on x, VAE on z
    assert loop_order(0, 1, 0) == ("y", "z", "x")
    assert cell_order(2, 1, 2, ("x", "z", "y")) == [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]


def test_axis_flag_parsing():
    assert split_axis_flag("Prompt S/R: a, b") == ("Prompt S/R", "a, b")
    assert split_axis_flag("Steps:10,20") == ("Steps", "10,20")
    with pytest.raises(UsageError, match="AXIS: VALUES"):
        split_axis_flag("10,20")


def test_bad_axis_values_are_reported_with_the_flag():
    with pytest.raises(StudyError) as err:
        xyz_study(check_files=False, prompt="x", x=("Steps", "1-5 (2)"), y=("Bogus", "1"))
    joined = "\n".join(err.value.problems)
    assert "--x values" in joined and "--y axis" in joined


def test_seed_axis_with_vary_adds_offsets_like_a1111():
    # A1111: Seed axis 1,2,3 with "Vary seeds for X" -> 1, 3, 5 (the offset goes on top of the value)
    p = plan(xyz_study(check_files=False, prompt="a cat", x=("Seed", "1,2,3"), vary_seeds=(True, False, False)))
    assert [c.spec.seed for c in p.cells] == [1, 3, 5]
    p = plan(xyz_study(check_files=False, prompt="a cat", x=("Steps", "2,3"), y=("CFG Scale", "5,6"), seed=10,
                       vary_seeds=(True, True, False)))
    assert {(c.col_index, c.row_index): c.spec.seed for c in p.cells} == {(0, 0): 10, (1, 0): 11, (0, 1): 12,
                                                                          (1, 1): 13}


def test_size_sampler_and_clip_skip_axes_set_the_cell():
    p = plan(xyz_study(check_files=False, prompt="a cat", x=("Size", "64x64, 64x96"),
                       y=("Sampler", "Euler a, DPM++ 2M"), z=("Clip skip", "1,2")))
    cells = {(c.col_index, c.row_index, c.page): c.spec for c in p.cells}
    assert (cells[(1, 0, 0)].width, cells[(1, 0, 0)].height) == (64, 96)
    assert cells[(0, 1, 0)].sampler == "DPM++ 2M Karras"  # A1111 1.10: "Automatic" is Karras for DPM++ 2M
    assert cells[(0, 0, 1)].model.clip_skip == 2
    assert len({c.key for c in p.cells}) == 8
    with pytest.raises(StudyError) as exc:  # refused with the study, before any plan
        xyz_study(check_files=False, prompt="a cat", x=("Size", "64x65"))
    assert "Size axis: 64x65 out of range" in "\n".join(exc.value.problems)


def test_sampler_the_engine_lacks_is_an_error_before_running():
    with pytest.raises(StudyError) as err:
        plan(xyz_study(check_files=False, prompt="a cat", x=("Sampler", "Euler a, DPM adaptive")))
    text = " ".join([str(err.value), *err.value.problems])
    assert "A1111's sampler 'DPM adaptive' is not one this engine can run; this engine runs: DPM++ 2M" in text
    p = plan(xyz_study(check_files=False, prompt="a cat", x=("Schedule type", "Automatic, Karras, Uniform"),
                       sampler="DPM++ 2M"))
    assert [c.spec.sampler for c in p.cells] == ["DPM++ 2M Karras", "DPM++ 2M Karras", "DPM++ 2M Uniform"]
    assert p.cells[0].key == p.cells[1].key  # the same images: made once


def test_expression_and_character_axes_from_flags(tmp_path):
    (tmp_path / "plain.toml").write_text('label = "plain"\ntext = "a plain woman"\n')
    study = xyz_study(base_dir=tmp_path, prompt="{character}, [face: {expression}: 0.2]",
                      x=("Character", "reference, plain.toml"), y=("Expression", "seed-study"), width=64, height=64)
    assert [v.label for v in study.columns.values] == ["reference", "plain"]
    assert len(study.rows.values) == 9 and study.rows.values[0].id == "neutral"
    p = plan(study)
    assert p.cells[0].spec.prompt == ", [face: neutral face expression: 0.2]"  # no --reference text: empty
    assert p.cells[-1].spec.prompt == "a plain woman, [face: " + study.rows.values[-1].value + ": 0.2]"
    inline = xyz_study(check_files=False, prompt="[face: {expression}: 0.2]", y=("Expression", "smiling, sad"))
    assert [v.value for v in inline.rows.values] == ["smiling", "sad"]


@pytest.mark.parametrize("case", [c for c in RUNS if "expected" in c and "z" not in c["input"]], ids=lambda c: c["name"])
def test_xyz_grid_geometry_matches_a1111_with_its_font_sizes(case):
    """With A1111's font sizing (no readability minimum, no growth for the feed size) the grid of the planned
    cells has A1111's width and, up to the fonts' own metrics, its height: A1111 draws with Roboto, we with a
    chain (Noto Sans CJK, DejaVu Sans, ...) whose line height covers every font of the chain, a few px taller."""
    from PIL import Image

    from expressiongrid.output.grid import GridStyle, compose_grid

    exp = case["expected"]
    study = _study(case)
    p = plan(study)
    w, h = study.sampling.width, study.sampling.height
    cells = [[Image.new("RGB", (w, h)) for _ in study.columns.values] for _ in study.rows.values]
    assert len(p.cells) == len(cells) * len(cells[0])
    grid = compose_grid(cells, [v.label for v in study.rows.values], [v.label for v in study.columns.values],
                        style=GridStyle(min_font_size=1, margin=study.output.margin, view_width=None))
    assert len(grid) == 1
    expected_w, expected_h = exp["result_images"][0]
    assert grid[0].width == expected_w
    assert abs(grid[0].height - expected_h) <= 4


def test_study_file_and_xyz_write_the_same_grid_keys_for_the_same_axes():
    from expressiongrid.study.study import study_from_dict

    axes = dict(x=("Steps", "10-20 (+10)"), y=("CFG Scale", "5, 7"), z=("Prompt S/R", "cat, dog"))
    xyz = xyz_study(check_files=False, prompt="a cat", vary_seeds=(False, True, False), **axes)
    data = {"name": "same", "model": {"source": "tiny"}, "prompt": {"positive": "a cat"},
            "sampling": {"seed_policy": "vary", "vary": ["rows"]},
            **{slot: {"axis": name, "values": values} for (slot, (name, values)) in
               zip(("columns", "rows", "pages"), axes.values())}}
    study = study_from_dict(data, check_files=False)
    keys = grid_axes(study.info())
    assert keys == grid_axes(xyz.info())
    assert keys == {"Script": "X/Y/Z plot", "X Type": "Steps", "X Values": "10-20 (+10)", "Y Type": "CFG Scale",
                    "Y Values": "5, 7", "Z Type": "Prompt S/R", "Z Values": "cat, dog", "Vary seeds": "Y"}
