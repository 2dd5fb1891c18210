"""Study files: the seed study as written, validation that reports every problem at once, the plan."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from expressiongrid.errors import StudyError
from expressiongrid.study.plan import cell_key, plan
from expressiongrid.study.study import load_study, study_from_dict

ROOT = Path(__file__).resolve().parents[1]

SEED_PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: {expression}: 0.2], RAW photo, {character}"


def _write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _tiny_study(tmp_path, extra_rows="", columns='axis = "characters"\nreference = true', more=""):
    return _write(tmp_path, f"""
        [model]
        source = "tiny"
        [sampling]
        steps = 3
        width = 64
        height = 64
        seed = 7
        [prompt]
        positive = "{SEED_PROMPT}"
        negative = "naked, illustration, 3d, drawing, cartoon, anime, 2girls"
        reference = "1girl"
        [rows]
        axis = "expressions"
        items = ["neutral face expression", "smiling"{extra_rows}]
        [columns]
        {columns}
        {more}
    """)


def test_seed_study_example_is_valid_as_written():
    """examples/seed-study.toml: 9 expressions x characters + a reference column, the 0.2 prompt."""
    path = ROOT / "examples" / "seed-study.toml"
    with pytest.raises(StudyError) as err:
        load_study(path)  # the real checkpoint and character files are placeholders on this machine
    problems = "\n".join(err.value.problems)
    assert "model.source" in problems and "file not found" in problems
    # everything else about it is valid: only missing files are reported
    assert all("not found" in p or "no files match" in p for p in err.value.problems), problems

    import tomllib

    data = tomllib.loads(path.read_text())
    data["model"]["source"] = "tiny"
    data["columns"]["files"] = []
    study = study_from_dict(data, base_dir=path.parent, source=str(path))
    assert [v.id for v in study.rows.values] == ["neutral", "bored", "frowning", "surprised", "smiling-open",
                                                 "smiling-closed", "laughing", "crying", "flirty"]
    assert study.columns.values[0].id == "reference"
    assert study.prompt == SEED_PROMPT
    assert study.negative_prompt == "naked, illustration, 3d, drawing, cartoon, anime, 2girls"
    p = plan(study)
    first = p.cells[0].spec.prompt
    assert first == ("closeup of woman facing viewer, [hair, neck, eyes, lips: neutral face expression: 0.2], "
                     "RAW photo, 1girl")
    assert len({c.spec.seed for c in p.cells}) == 1  # one seed for every cell (the default policy)


def test_all_problems_are_reported_at_once(tmp_path):
    path = _write(tmp_path, """
        [model]
        source = "models/missing.safetensors"
        clip_skip = 0
        dtype = "fp8"
        [sampling]
        steps = "twenty"
        width = 500
        sampler = "Euler b"
        cfgscale = 7
        seed_policy = "sometimes"
        [prompt]
        positive = "a {expresion} face"
        [rows]
        axis = "expressions"
        set = "no-such-set"
        [columns]
        axis = "Stepz"
        values = "1,2"
    """)
    with pytest.raises(StudyError) as err:
        load_study(path)
    problems = err.value.problems
    joined = "\n".join(problems)
    for key in ("model.source", "model.clip_skip", "model.dtype", "sampling.steps", "sampling.width",
                "sampling.sampler", "sampling.cfgscale", "sampling.seed_policy", "prompt.positive", "rows.set",
                "columns.axis"):
        assert f": {key}:" in joined, f"{key} not reported:\n{joined}"
    assert all(p.startswith(str(path)) for p in problems)  # every line names the file
    assert "expected an integer from 1 to 1000, got 'twenty'" in joined
    assert "unknown placeholder {expresion}" in joined
    assert "unknown key" in joined and "cfg_scale" in joined  # the typo's line lists the valid keys
    assert "Euler a" in joined  # the sampler problem lists valid names


def test_problems_found_before_any_model_loads(tmp_path, monkeypatch):
    import expressiongrid.engine.loading as loading

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("model loaded during validation")

    monkeypatch.setattr(loading, "load_model", boom)
    path = _tiny_study(tmp_path, more='[output]\nupload_copy = "gif"')
    with pytest.raises(StudyError, match="1 problem"):
        load_study(path)


def test_prompt_syntax_a1111_rejects_is_a_study_problem(tmp_path):
    path = _tiny_study(tmp_path)
    path.write_text(path.read_text().replace("RAW photo", "(RAW photo:1.2.3)"))
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert "prompt.positive" in err.value.problems[0] and "1.2.3" in err.value.problems[0]


def test_placeholder_must_match_axes(tmp_path):
    path = _write(tmp_path, """
        [prompt]
        positive = "a portrait, {character}"
        [rows]
        axis = "expressions"
        items = ["smiling"]
        [columns]
        axis = "Steps"
        values = "10,20"
    """)
    with pytest.raises(StudyError) as err:
        load_study(path)
    joined = "\n".join(err.value.problems)
    assert "no {expression} placeholder" in joined
    assert "uses {character} but no axis is characters" in joined


def test_expression_set_by_name_and_subset(tmp_path):
    path = _write(tmp_path, """
        [prompt]
        positive = "a woman, [face: {expression}: 0.2]"
        [sampling]
        width = 64
        height = 64
        [rows]
        axis = "expressions"
        set = "seed-study"
        only = ["flirty", "neutral"]
        [columns]
        axis = "CFG Scale"
        values = "5, 7.5"
    """)
    study = load_study(path)
    assert [v.id for v in study.rows.values] == ["flirty", "neutral"]
    assert study.rows.values[1].value == "neutral face expression"
    assert [v.label for v in study.columns.values] == ["CFG Scale: 5.0", "CFG Scale: 7.5"]
    p = plan(study)
    assert [c.spec.cfg_scale for c in p.cells if c.row_index == 0] == [5.0, 7.5]


def test_unknown_subset_id_lists_known_ids(tmp_path):
    path = _write(tmp_path, """
        [prompt]
        positive = "{expression}"
        [rows]
        axis = "expressions"
        set = "seed-study"
        only = ["grumpy"]
        [columns]
        axis = "Nothing"
    """)
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert "unknown expression ids grumpy" in err.value.problems[0] and "neutral" in err.value.problems[0]


def test_keys_depend_on_everything_that_changes_pixels(tmp_path):
    study = load_study(_tiny_study(tmp_path))
    p1 = plan(study)
    p2 = plan(load_study(_tiny_study(tmp_path)))
    assert [c.key for c in p1.cells] == [c.key for c in p2.cells]  # stable across loads
    assert len(set(c.key for c in p1.cells)) == 2
    base = p1.cells[0].key_inputs
    for change in ({"seed": 8}, {"steps": 4}, {"cfg_scale": 6.5}, {"sampler": "Euler"}, {"width": 72},
                   {"prompt": base["prompt"] + "!"}, {"negative_prompt": ""}, {"noise_source": "gpu"}):
        assert cell_key({**base, **change}) != cell_key(base), change
    assert cell_key({**base, "model": {**base["model"], "clip_skip": 2}}) != cell_key(base)
    assert cell_key({**base, "model": {**base["model"], "dtype": "fp16"}}) != cell_key(base)


def test_adding_a_row_keeps_existing_keys(tmp_path):
    small = plan(load_study(_tiny_study(tmp_path)))
    big = plan(load_study(_tiny_study(tmp_path, extra_rows=', "sad crying"')))
    assert set(c.key for c in small.cells) < set(c.key for c in big.cells)
    assert len(big.cells) == 3


def test_columns_are_the_outer_loop_for_characters(tmp_path):
    path = _tiny_study(tmp_path, columns='axis = "LoRA weight"\nvalues = "0.5, 1"',
                       )
    text = path.read_text().replace(", {character}", "")
    path.write_text(text)
    study = load_study(path)
    p = plan(study)
    # no cost difference: A1111's default nesting, rows (y) outside columns (x)
    assert [(c.row_index, c.col_index) for c in p.cells] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_seed_policies(tmp_path):
    vary = plan(load_study(_tiny_study(tmp_path, more="")), rng=random.Random(0))
    assert {c.spec.seed for c in vary.cells} == {7}

    path = _tiny_study(tmp_path)
    path.write_text(path.read_text().replace("seed = 7", 'seed = 7\nseed_policy = "vary"\nvary = ["rows"]'))
    p = plan(load_study(path))
    assert [c.spec.seed for c in sorted(p.cells, key=lambda c: c.row_index)] == [7, 8]

    path.write_text(path.read_text().replace('seed_policy = "vary"\nvary = ["rows"]',
                                             'seed_policy = "per-cell"\nseeds_per_cell = 3'))
    p = plan(load_study(path))
    assert len(p.cells) == 6
    assert [c.spec.seed for c in p.cells if c.row_index == 0] == [7, 8, 9]
    assert [c.sample for c in p.cells if c.row_index == 0] == [0, 1, 2]
    assert p.describe()["seeds_per_cell"] == 3

    path.write_text(path.read_text().replace("seed = 7", "seed = -1"))
    a = plan(load_study(path), rng=random.Random(1))
    assert len({c.spec.seed for c in a.cells if c.sample == 0}) == 1  # -1 is drawn once for the whole grid
    assert 0 <= a.base_seed < 4294967294


def test_describe_reports_cells_pages_and_grid_size(tmp_path):
    p = plan(load_study(_tiny_study(tmp_path, more='[pages]\naxis = "Steps"\nvalues = "2,3"')))
    d = p.describe()
    assert (d["cells"], d["rows"], d["columns"], d["pages"]) == (4, 2, 1, 2)
    w, h = d["grid_size"]
    assert w > 64 and h > 2 * 64
    assert d["grid_parts_per_page"] == 1 and d["grid"].startswith(f"1 grid page of {w}x{h} px")


def test_huge_grids_are_planned_as_parts_not_refused(tmp_path):
    """A1111 refuses grids over 200 MP; here the grid is split into viewable parts and the run goes on."""
    path = _write(tmp_path, """
        [sampling]
        width = 1024
        height = 1024
        [prompt]
        positive = "a face"
        [rows]
        axis = "Seed"
        values = "1-150"
        [columns]
        axis = "CFG Scale"
        values = "1-15 [150]"
    """)
    p = plan(load_study(path))
    d = p.describe()
    assert d["cells"] == 150 * 150
    assert d["grid_megapixels"] > 200  # beyond A1111's img_max_size_mp
    assert d["grid_parts_per_page"] > 1
    assert "grid pages" in d["grid"] and "instead of one" in d["grid"]


def test_embedding_tokens_of_two_characters_that_are_prefixes_of_one_another_are_a_study_problem(tmp_path):
    """Each character alone is fine; together "anna" would also match inside "anna2" in every prompt."""
    import torch

    from expressiongrid.characters.demo import save_safetensors_embedding

    for name, token in (("anna", "anna"), ("anna2", "anna2")):
        save_safetensors_embedding(tmp_path / f"{name}.safetensors", torch.randn(2, 32))
        _write(tmp_path, f'label = "{name}"\ntext = "{token}"\n[[embedding]]\nfile = "{name}.safetensors"\n'
                         f'token = "{token}"\n', name=f"{name}.toml")
    alone = load_study(_tiny_study(tmp_path, columns='axis = "characters"\nfiles = ["anna.toml"]'))
    assert [c.id for c in alone.columns.values] == ["anna"]
    with pytest.raises(StudyError) as err:
        load_study(_tiny_study(tmp_path, columns='axis = "characters"\nfiles = ["anna.toml", "anna2.toml"]'))
    joined = "\n".join(err.value.problems)
    assert ": columns:" in joined and "'anna2' and 'anna'" in joined and "prefixes of one" in joined


def test_an_embedding_longer_than_a_prompt_chunk_is_refused_before_the_model_loads(tmp_path):
    import torch

    from expressiongrid.characters.demo import save_safetensors_embedding

    save_safetensors_embedding(tmp_path / "long.safetensors", torch.randn(100, 32))
    save_safetensors_embedding(tmp_path / "fine.safetensors", torch.randn(75, 32))
    study = load_study(_tiny_study(tmp_path, columns='axis = "characters"\nfiles = ["long.safetensors", '
                                                     '"fine.safetensors"]'))
    assert list(study.column_problems) == ["long"]
    assert "embedding of 100 vectors" in study.column_problems["long"][0]
    assert "at most 75" in study.column_problems["long"][0]


def test_an_embedding_made_for_another_text_encoder_width_is_refused_before_the_model_loads(tmp_path):
    """An SD1.5 embedding (768 wide) given to the tiny model (32 wide) is found from the file's header."""
    import torch

    from expressiongrid.characters.demo import save_safetensors_embedding

    save_safetensors_embedding(tmp_path / "sd15.safetensors", torch.randn(2, 768))
    save_safetensors_embedding(tmp_path / "tiny.safetensors", torch.randn(2, 32))
    study = load_study(_tiny_study(tmp_path, columns='axis = "characters"\nfiles = ["sd15.safetensors", '
                                                     '"tiny.safetensors"]'))
    assert list(study.column_problems) == ["sd15"]
    assert "text encoder 768 wide but the model's is 32 wide" in study.column_problems["sd15"][0]


def test_an_axis_key_its_kind_does_not_read_is_a_problem_not_passed_over():
    base = {"name": "t", "model": {"source": "tiny"}, "prompt": {"positive": "a {expression}"}}

    def problems(rows, columns):
        try:
            study_from_dict({**base, "rows": rows, "columns": columns}, check_files=False)
        except StudyError as exc:
            return exc.problems
        return []

    got = problems({"axis": "expressions", "items": ["smile"], "reference": True},
                   {"axis": "Steps", "values": "1,2", "only": ["1"]})
    assert got == ["<study>: rows.reference: the expressions axis does not read reference; it takes items, only, set, "
                   "values", "<study>: columns.only: the Steps axis does not read only; it takes values"]
    assert problems({"axis": "expressions", "items": ["smile"]}, {"axis": "Nothing", "values": "a, b"}) == [
        "<study>: columns.values: the Nothing axis does not read values; it takes no other key"]
    assert problems({"axis": "expressions", "items": ["smile"], "only": ["smile"]}, {"axis": "Steps", "values": "1"}) \
        == []
