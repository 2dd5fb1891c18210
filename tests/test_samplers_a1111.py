"""One sampler table everywhere: A1111 1.10's names, legacy combined names and the Sampler + Schedule type split
mean the same in study files, axes, `xyz` and the metadata; names the engine cannot run are refused in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from expressiongrid.cli import main
from expressiongrid.samplers import RUNNABLE, SCHEDULE_TYPES, get_sampler
from expressiongrid.errors import SamplerError
from expressiongrid.output.infotext import parse_parameters
from expressiongrid.study.plan import plan
from expressiongrid.study.study import study_from_dict
from expressiongrid.study.xyz import xyz_study

# A1111 1.10's meaning of "Automatic" (each sampler's 'scheduler' option; none = the model's own schedule)
AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential",
             "DPM++ 2M SDE Heun": "Exponential", "DPM2": "Karras", "DPM2 a": "Karras", "Euler a": "Automatic",
             "Euler": "Automatic", "LMS": "Automatic", "Heun": "Automatic", "DDIM": "Automatic", "UniPC": "Automatic"}


def test_automatic_means_what_it_means_in_a1111():
    assert set(AUTOMATIC) == set(RUNNABLE)
    for sampler, schedule in AUTOMATIC.items():
        info = get_sampler(sampler, "Automatic")
        assert (info.sampler, info.schedule_type) == (sampler, schedule), sampler
        if schedule != "Automatic":  # the same sampler as naming the schedule
            assert get_sampler(sampler, schedule) is info is get_sampler(f"{sampler} {schedule}")
    assert SCHEDULE_TYPES[:4] == ("Automatic", "Uniform", "Karras", "Exponential")
    assert get_sampler("k_dpmpp_2m_sde") is get_sampler("DPM++ 2M SDE Exponential")  # A1111's aliases
    assert get_sampler("dpm++ 2m karras", "Exponential") is get_sampler("DPM++ 2M Karras")  # the name's own wins


def _cell(**sampling):
    study = study_from_dict({"sampling": {"steps": 2, "width": 64, "height": 64, "seed": 1, **sampling},
                             "prompt": {"positive": "a cat"}, "rows": {"axis": "Nothing"},
                             "columns": {"axis": "Nothing"}}, check_files=False)
    return plan(study).cells[0]


def test_study_axis_and_xyz_spellings_make_the_same_cell():
    keys = {
        "study legacy name": _cell(sampler="DPM++ 2M Karras").key,
        "study split": _cell(sampler="DPM++ 2M", schedule_type="Karras").key,
        "study automatic": _cell(sampler="DPM++ 2M").key,
        "study alias": _cell(sampler="k_dpmpp_2m").key,
    }
    sampler_axis = plan(xyz_study(check_files=False, prompt="a cat", seed=1, steps=2, width=64, height=64,
                                  x=("Sampler", "DPM++ 2M Karras, Euler")))
    keys["Sampler axis"] = sampler_axis.cells[0].key
    schedule_axis = plan(xyz_study(check_files=False, prompt="a cat", seed=1, steps=2, width=64, height=64,
                                   sampler="DPM++ 2M", x=("Schedule type", "Karras, Uniform")))
    keys["Schedule type axis"] = schedule_axis.cells[0].key
    flags = plan(xyz_study(check_files=False, prompt="a cat", seed=1, steps=2, width=64, height=64,
                           sampler="DPM++ 2M", schedule_type="Karras", x=("Steps", "2")))
    keys["xyz --sampler --schedule-type"] = flags.cells[0].key
    assert len(set(keys.values())) == 1, keys
    assert schedule_axis.cells[1].spec.sampler == "DPM++ 2M Uniform" != schedule_axis.cells[0].spec.sampler
    assert sampler_axis.cells[1].spec.sampler == "Euler"


@pytest.mark.parametrize("args, message", [
    (["--x", "Sampler: DPM++ 3M SDE, Euler"], "A1111's sampler 'DPM++ 3M SDE' is not one this engine can run"),
    (["--x", "Sampler: Euler b"], "unknown sampler 'Euler b'"),
    (["--sampler", "Euler a", "--x", "Schedule type: Karras"], "Euler a does not run with schedule type 'Karras'"),
    (["--x", "Schedule type: Sideways"], "unknown schedule type 'Sideways'"),
    (["--sampler", "DDIM", "--schedule-type", "Align Your Steps", "--x", "Steps: 2"], "DDIM does not run with"),
])
def test_what_the_engine_cannot_run_is_refused_listing_what_it_can(args, message, tmp_path):
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a cat", "--dry-run", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    if "Sideways" not in message:
        assert "this engine runs: DPM++ 2M, DPM++ SDE" in result.output and "Karras" in result.output
    with pytest.raises(SamplerError):
        get_sampler("DPM fast")


def test_a_schedule_type_a_combined_sampler_name_overrides_is_said(tmp_path):
    def warned(*args):
        result = CliRunner().invoke(main, ["xyz", "--prompt", "a cat", "--dry-run", "--out", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        return [line for line in result.stderr.splitlines() if "names its own schedule type" in line]

    lines = warned("--sampler", "DPM++ 2M Karras", "--schedule-type", "Exponential", "--x", "Steps: 2")
    assert lines == ["warning: sampler 'DPM++ 2M Karras' names its own schedule type (Karras), which wins over "
                     "schedule type 'Exponential', as in A1111; write the sampler without it ('DPM++ 2M') to use "
                     "the other"]
    assert len(warned("--x", "Sampler: DPM++ 2M Karras, Euler", "--y", "Schedule type: Automatic, Beta")) == 1
    assert warned("--sampler", "DPM++ 2M Karras", "--schedule-type", "Karras", "--x", "Steps: 2") == []
    assert warned("--sampler", "DPM++ 2M", "--x", "Schedule type: Exponential, Karras") == []


@pytest.mark.slow
def test_schedule_type_is_written_and_reads_back_to_the_same_sampler(tmp_path):
    from expressiongrid.store import Store

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["xyz", "--prompt", "a cat", "--seed", "5", "--steps", "2", "--width", "64",
                                       "--height", "64", "--sampler", "Euler", "--x", "Schedule type: Automatic, Karras",
                                       "--y", "Sampler: Euler, DPM++ 2M", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cells = Store.open_existing(out).cells()  # one per distinct image: DPM++ 2M Automatic is DPM++ 2M Karras
    written = sorted((p["Sampler"], p["Schedule type"]) for p in (parse_parameters(c.parameters) for c in cells))
    # A1111 1.10 writes "Schedule type" always: the chosen one, the sampler's default for Automatic
    assert written == [("DPM++ 2M", "Karras"), ("Euler", "Automatic"), ("Euler", "Karras")]
    for c in cells:  # read back, the metadata names the very sampler the cell was made with
        p = parse_parameters(c.parameters)
        assert get_sampler(p["Sampler"], p["Schedule type"]).name == c.sampler
