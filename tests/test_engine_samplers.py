"""Sampler names: A1111's names map to the right diffusers schedulers, seeds and noise sources."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from expressiongrid.engine.schedulers import make_scheduler
from expressiongrid.samplers import RUNNABLE, SAMPLERS, get_sampler
from expressiongrid.errors import SamplerError, UsageError

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REQUIRED = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DPM++ SDE Karras", "DDIM",
            "UniPC", "Heun", "LMS", "DPM2"]


@pytest.mark.parametrize("name,cls,checks", [
    ("Euler a", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("Euler", "EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    # A1111 1.10's "Automatic": Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, the model's own for Euler
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    ("DPM++ 2M Uniform", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False,
                                                         "use_exponential_sigmas": False}),
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True}),
    ("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", {"solver_type": "heun", "use_exponential_sigmas": True}),
    ("Euler Beta", "EulerDiscreteScheduler", {"use_beta_sigmas": True, "beta_schedule": "scaled_linear"}),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    ("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    ("DDIM", "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("UniPC", "UniPCMultistepScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("DPM2", "KDPM2DiscreteScheduler", {}),
])
def test_a1111_names_build_the_right_scheduler(tiny_pipeline, name, cls, checks):
    scheduler = make_scheduler(name, tiny_pipeline.scheduler.config)
    assert type(scheduler).__name__ == cls
    for key, value in checks.items():
        assert scheduler.config[key] == value, key
    assert scheduler.config.beta_schedule == "scaled_linear"  # the model's own schedule is kept
    assert make_scheduler(name, tiny_pipeline.scheduler.config) is not scheduler  # fresh state every time


def test_karras_sigmas_span_the_models_full_range(tiny_pipeline):
    """A1111's Karras schedule runs from the model's sigma_max (14.61 for SD1.5) down to sigma_min."""
    scheduler = make_scheduler("DPM++ 2M Karras", tiny_pipeline.scheduler.config)
    scheduler.set_timesteps(20)
    assert float(scheduler.sigmas[0]) == pytest.approx(14.6146, abs=1e-3)
    assert float(scheduler.sigmas[-2]) == pytest.approx(0.0292, abs=1e-3)


def test_required_names_and_second_order_flags():
    assert all(get_sampler(name) for name in REQUIRED)
    second = {n for n in [*SAMPLERS, *RUNNABLE] if get_sampler(n).second_order}
    assert {"Heun", "DPM2", "DPM++ SDE Karras", "DPM2 a"} <= second
    assert not second & {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE Karras", "DDIM", "UniPC", "LMS"}
    info = get_sampler("DPM++ 2M Karras")
    assert (info.sampler, info.schedule_type) == ("DPM++ 2M", "Karras")  # infotext "Sampler"/"Schedule type"
    assert get_sampler("DPM++ 2M", schedule_type="Karras") is info
    assert get_sampler("euler A").name == "Euler a"


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(SamplerError) as err:
        get_sampler("Euler b")
    for name in ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS", "DPM2",
                 "Karras", "Exponential"):
        assert name in str(err.value)
    assert isinstance(err.value, UsageError)  # exit code 2 at the CLI


def test_sampler_table_needs_no_torch():
    import subprocess

    code = "import sys; from expressiongrid.samplers import SAMPLERS; assert 'torch' not in sys.modules, 'torch'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_sampler_makes_a_clean_image(tiny_pipeline):
    from expressiongrid.engine import ImageRequest, ModelSpec, generate, load_model

    model = load_model(ModelSpec("tiny"))
    # every sampler at its Automatic schedule, and every schedule type once
    names = [*RUNNABLE, "Euler Uniform", "Euler Karras", "Euler Exponential", "Euler Beta"]
    reqs = [ImageRequest("woman [neutral:smiling:1] face", "blurry", seed=3, steps=3, cfg_scale=7.0,
                         width=64, height=64, sampler=name) for name in names]
    results = generate(model, reqs, batch_size=4)
    assert all(r.ok and not r.nan_retried for r in results), [(n, r.error) for n, r in zip(names, results)]
    pixels = {name: np.asarray(r.image) for name, r in zip(names, results)}
    assert pixels["Euler"].tobytes() != pixels["Euler a"].tobytes()
    assert pixels["Euler"].tobytes() == pixels["Euler Uniform"].tobytes()  # A1111: Automatic is Uniform for Euler
    assert len({pixels[n].tobytes() for n in ("Euler", "Euler Karras", "Euler Exponential", "Euler Beta")}) == 4


def test_noise_sources_and_generators():
    from expressiongrid.engine.noise import initial_noise, make_generators

    # GPU noise without a GPU is refused: CPU noise would silently make other images than asked for
    with pytest.raises(UsageError, match='needs a CUDA or MPS device but the model runs on cpu'):
        make_generators([1, 2], "gpu", "cpu")
    a = initial_noise(make_generators([7], "cpu", "cpu"), (4, 8, 8), "cpu", torch.float32)
    b = initial_noise(make_generators([7, 8], "cpu", "cpu"), (4, 8, 8), "cpu", torch.float32)
    assert torch.equal(a[0], b[0])  # the first image's noise does not depend on the batch
    assert torch.equal(a[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(7)))  # A1111's CPU draw
    half = initial_noise(make_generators([7], "cpu", "cpu"), (4, 8, 8), "cpu", torch.bfloat16)
    assert torch.equal(half[0], a[0].to(torch.bfloat16))  # drawn in fp32, then cast
    with pytest.raises(UsageError, match="noise source"):
        make_generators([1], "nv", "cpu")


def test_one_table_every_implemented_sampler_is_an_a1111_sampler():
    from expressiongrid.samplers import A1111_SAMPLERS, canonical_sampler

    for name, info in SAMPLERS.items():
        assert info.sampler in A1111_SAMPLERS, name
        assert canonical_sampler(name.lower()) == name  # what the axis accepts, the engine finds
        assert get_sampler(canonical_sampler(name.upper())) is info


def test_aliases_and_old_combined_names_reach_the_engine():
    from expressiongrid.samplers import canonical_sampler

    assert get_sampler("k_euler_a").name == "Euler a"
    assert canonical_sampler("dpm++ 2m  KARRAS") == "DPM++ 2M Karras"
    assert get_sampler("k_dpmpp_2m", schedule_type="Karras").name == "DPM++ 2M Karras"
    assert canonical_sampler("DPM fast") == "DPM fast"  # A1111 knows it ...
    with pytest.raises(SamplerError):
        get_sampler("DPM fast")  # ... the engine does not implement it
    assert canonical_sampler("Euler b") is None
