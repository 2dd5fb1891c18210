"""The A1111 sampler table: every sampler name A1111 knows, and how the engine realises those it implements.

One table for the whole package: study files and the Sampler axis accept ``A1111_SAMPLERS`` names and
aliases (``canonical_sampler``), the planner refuses the ones without a ``SAMPLERS`` entry before anything
runs, the prompt schedule asks ``is_second_order``, the engine builds schedulers from ``SamplerInfo`` and
the metadata writes ``SamplerInfo.sampler`` / ``.schedule_type``.

A1111 (v1.10) names a sampler ("DPM++ 2M") and, separately, a schedule type ("Karras"); the older combined
names ("DPM++ 2M Karras") are what most users type and what XYZ plots and infotexts of older images carry.
Both spellings are accepted here; `SamplerInfo.sampler` and `.schedule_type` are what goes into the infotext.

Timestep spacing: A1111 runs these samplers through k-diffusion, whose "Automatic" schedule spaces the
model's timesteps evenly from 999 to 0 (diffusers' ``timestep_spacing="linspace"``), and starts from
``noise * sigmas[0]``, which is what diffusers' Euler-family ``init_noise_sigma`` is with linspace spacing.
DDIM in A1111 uses the CompVis "uniform" discretisation (``leading`` with ``steps_offset=1``, the SD1.5
config default), so DDIM keeps the base config's spacing.

This module is plain data and imports no torch or diffusers: `--help`, study validation, the prompt
schedule and the metadata all read it. ``engine.schedulers.make_scheduler`` builds the diffusers object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expressiongrid.errors import SamplerError


@dataclass(frozen=True)
class SamplerInfo:
    """How one A1111 sampler name is realised with diffusers."""

    name: str  # the name as the user wrote it / A1111 lists it
    sampler: str  # A1111's sampler name without schedule type (infotext "Sampler")
    schedule_type: str  # infotext "Schedule type" ("Automatic", "Karras")
    scheduler_class: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    # Second-order samplers evaluate the model twice per step; A1111 builds the prompt schedule on 2 x steps.
    second_order: bool = False
    # Ancestral/SDE samplers draw fresh noise every step, from each image's own generator.
    stochastic: bool = False


_LINSPACE = {"timestep_spacing": "linspace"}
_KARRAS = {**_LINSPACE, "use_karras_sigmas": True}


def _table() -> dict[str, SamplerInfo]:
    rows = [
        # name, sampler, schedule, class, options, second_order, stochastic
        ("Euler a", "Euler a", "Automatic", "EulerAncestralDiscreteScheduler", _LINSPACE, False, True),
        ("Euler", "Euler", "Automatic", "EulerDiscreteScheduler", _LINSPACE, False, False),
        ("Euler Karras", "Euler", "Karras", "EulerDiscreteScheduler", _KARRAS, False, False),
        ("LMS", "LMS", "Automatic", "LMSDiscreteScheduler", _LINSPACE, False, False),
        ("LMS Karras", "LMS", "Karras", "LMSDiscreteScheduler", _KARRAS, False, False),
        ("Heun", "Heun", "Automatic", "HeunDiscreteScheduler", _LINSPACE, True, False),
        ("DPM2", "DPM2", "Automatic", "KDPM2DiscreteScheduler", _LINSPACE, True, False),
        ("DPM2 Karras", "DPM2", "Karras", "KDPM2DiscreteScheduler", _KARRAS, True, False),
        ("DPM2 a", "DPM2 a", "Automatic", "KDPM2AncestralDiscreteScheduler", _LINSPACE, True, True),
        ("DPM2 a Karras", "DPM2 a", "Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS, True, True),
        ("DPM++ 2M", "DPM++ 2M", "Automatic", "DPMSolverMultistepScheduler",
         {**_LINSPACE, "algorithm_type": "dpmsolver++", "solver_order": 2}, False, False),
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras", "DPMSolverMultistepScheduler",
         {**_KARRAS, "algorithm_type": "dpmsolver++", "solver_order": 2}, False, False),
        ("DPM++ 2M SDE", "DPM++ 2M SDE", "Automatic", "DPMSolverMultistepScheduler",
         {**_LINSPACE, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}, False, True),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras", "DPMSolverMultistepScheduler",
         {**_KARRAS, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}, False, True),
        ("DPM++ SDE", "DPM++ SDE", "Automatic", "DPMSolverSDEScheduler", _LINSPACE, True, True),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras", "DPMSolverSDEScheduler", _KARRAS, True, True),
        ("DDIM", "DDIM", "Automatic", "DDIMScheduler", {}, False, False),
        ("UniPC", "UniPC", "Automatic", "UniPCMultistepScheduler", _LINSPACE, False, False),
    ]
    return {r[0]: SamplerInfo(*r[:4], options=dict(r[4]), second_order=r[5], stochastic=r[6]) for r in rows}


SAMPLERS: dict[str, SamplerInfo] = _table()

# A1111 v1.10.1 sampler names and their aliases (``sd_samplers.samplers_map``), implemented or not.
A1111_SAMPLERS: dict[str, tuple[str, ...]] = {
    "DPM++ 2M": ("k_dpmpp_2m",),
    "DPM++ SDE": ("k_dpmpp_sde",),
    "DPM++ 2M SDE": ("k_dpmpp_2m_sde",),
    "DPM++ 2M SDE Heun": ("k_dpmpp_2m_sde_heun",),
    "DPM++ 2S a": ("k_dpmpp_2s_a",),
    "DPM++ 3M SDE": ("k_dpmpp_3m_sde",),
    "Euler a": ("k_euler_a", "k_euler_ancestral"),
    "Euler": ("k_euler",),
    "LMS": ("k_lms",),
    "Heun": ("k_heun",),
    "DPM2": ("k_dpm_2",),
    "DPM2 a": ("k_dpm_2_a",),
    "DPM fast": ("k_dpm_fast",),
    "DPM adaptive": ("k_dpm_ad",),
    "Restart": ("restart",),
    "DDIM": ("ddim",),
    "DDIM CFG++": ("ddim_cfgpp",),
    "PLMS": ("plms",),
    "UniPC": ("unipc",),
    "LCM": ("k_lcm",),
}

# Schedule types that older A1111 versions appended to the sampler name ("DPM++ 2M Karras"); an
# infotext's old-style name is split on these.
SCHEDULE_TYPE_SUFFIXES = ("Karras", "Exponential", "Uniform", "SGM Uniform", "Polyexponential", "Align Your Steps")

_SAMPLER_LOOKUP = {key.lower(): name for name, aliases in A1111_SAMPLERS.items() for key in (name, *aliases)}


def _normal(name: str) -> str:
    return " ".join(str(name).split()).lower()


def split_schedule_suffix(name: str) -> tuple[str, str | None]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; a name without a schedule suffix -> ``(name, None)``."""
    for suffix in SCHEDULE_TYPE_SUFFIXES:
        if name.endswith(" " + suffix):
            return name[: -len(suffix) - 1], suffix
    return name, None


def canonical_sampler(name: str) -> str | None:
    """The A1111 sampler name for `name`, one of its aliases (any case) or an old-style combined name
    such as ``dpm++ 2m karras`` (-> ``"DPM++ 2M Karras"``); None if A1111 does not know it."""
    key = _normal(name)
    if key in _SAMPLER_LOOKUP:
        return _SAMPLER_LOOKUP[key]
    for suffix in SCHEDULE_TYPE_SUFFIXES:
        base = _SAMPLER_LOOKUP.get(key.removesuffix(" " + suffix.lower())) if key.endswith(" " + suffix.lower()) else None
        if base is not None:
            return f"{base} {suffix}"
    return None

# A1111 1.10 also accepts the sampler and schedule type as separate settings; map the pair back.
_BY_PAIR = {(info.sampler.lower(), info.schedule_type.lower()): info for info in SAMPLERS.values()}


def get_sampler(name: str, schedule_type: str | None = None) -> SamplerInfo:
    """Look up a sampler by A1111 name or alias (case-insensitive), optionally with a separate schedule type.

    Raises `SamplerError` listing the valid names when the name is unknown.
    """
    key = _normal(canonical_sampler(name) or name)
    if schedule_type and schedule_type.lower() not in ("automatic", ""):
        info = _BY_PAIR.get((key, schedule_type.lower()))
    else:
        info = next((i for n, i in SAMPLERS.items() if n.lower() == key), None)
    if info is None:
        wanted = f"{name!r}" + (f" with schedule type {schedule_type!r}" if schedule_type else "")
        raise SamplerError(f"unknown sampler {wanted}; valid samplers: {', '.join(SAMPLERS)}")
    return info


def is_second_order(name: str) -> bool:
    """True for samplers that call the model twice per step (A1111 doubles the prompt schedule for them)."""
    return get_sampler(name).second_order
