"""The A1111 sampler table: every sampler and schedule type A1111 1.10 knows, and how the engine realises the
ones it implements.

One table for the whole package: study files (``sampler``, ``schedule_type``), the Sampler and Schedule type
axes, ``xyz``, the configuration's ``[defaults]``, the planner, the prompt schedule (``is_second_order``), the
engine (``engine.schedulers.make_scheduler`` builds the diffusers object from ``SamplerInfo``) and the
metadata (``SamplerInfo.sampler`` / ``.schedule_type``) all resolve names through `get_sampler`.

A1111 (v1.10) names a sampler ("DPM++ 2M") and, separately, a schedule type ("Karras"); the older combined
names ("DPM++ 2M Karras") are what most users type and what XYZ plots and infotexts of older images carry.
Both spellings are accepted, and "Automatic" means what it means in A1111: each sampler's own default
(Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, the model's schedule for Euler a).

Timestep spacing: A1111 runs these samplers through k-diffusion, whose "Automatic" schedule spaces the
model's timesteps evenly from 999 to 0 (diffusers' ``timestep_spacing="linspace"``), and starts from
``noise * sigmas[0]``, which is what diffusers' Euler-family ``init_noise_sigma`` is with linspace spacing.
DDIM in A1111 uses the CompVis "uniform" discretisation (``leading`` with ``steps_offset=1``, the SD1.5
config default), so DDIM keeps the base config's spacing.

This module is plain data and imports no torch or diffusers: `--help`, study validation, the prompt
schedule and the metadata all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expressiongrid.errors import SamplerError


@dataclass(frozen=True)
class SamplerInfo:
    """How one A1111 sampler with one schedule type is realised with diffusers."""

    name: str  # canonical combined name ("DPM++ 2M Karras", "Euler a"); get_sampler(name) gives this back
    sampler: str  # A1111's sampler name without schedule type (infotext "Sampler")
    schedule_type: str  # the schedule A1111 uses, "Automatic" resolved (infotext "Schedule type")
    scheduler_class: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    # Second-order samplers evaluate the model twice per step; A1111 builds the prompt schedule on 2 x steps.
    second_order: bool = False
    # Ancestral/SDE samplers draw fresh noise every step, from each image's own generator.
    stochastic: bool = False


# A1111 1.10's schedule types (modules/sd_schedulers.py), in its order. "Automatic" is each sampler's own
# default (below); the others are k-diffusion sigma schedules.
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                  "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
_SCHEDULE_ALIASES = {"sgmuniform": "SGM Uniform"}
# The schedules diffusers' k-diffusion-style schedulers can make, as options. "Uniform" is the model's own
# sigmas at evenly spaced timesteps, which is what k-diffusion's get_sigmas gives; "Beta" is A1111's default
# Beta(0.6, 0.6), diffusers' too.
_SIGMAS = {"Uniform": {}, "Karras": {"use_karras_sigmas": True}, "Exponential": {"use_exponential_sigmas": True},
           "Beta": {"use_beta_sigmas": True}}
_K_SCHEDULES = tuple(_SIGMAS)
_LINSPACE = {"timestep_spacing": "linspace"}


@dataclass(frozen=True)
class _Sampler:
    """One A1111 sampler: its aliases, what "Automatic" means for it, and how diffusers runs it (or None)."""

    name: str
    aliases: tuple[str, ...]
    automatic: str = "Uniform"  # A1111's default scheduler for it ('scheduler' option); Uniform when none
    scheduler_class: str | None = None  # None: A1111 has it, this engine cannot run it
    options: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = _K_SCHEDULES  # the schedule types it runs with here (besides Automatic)
    second_order: bool = False
    stochastic: bool = False


_DPMPP = {**_LINSPACE, "algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {**_LINSPACE, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}
# A1111 1.10's samplers (sd_samplers_kdiffusion, sd_samplers_timesteps) with their defaults for "Automatic".
_A1111 = [
    _Sampler("DPM++ 2M", ("k_dpmpp_2m",), "Karras", "DPMSolverMultistepScheduler", _DPMPP),
    _Sampler("DPM++ SDE", ("k_dpmpp_sde",), "Karras", "DPMSolverSDEScheduler", _LINSPACE, second_order=True,
             stochastic=True),
    _Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde", "k_dpmpp_2m_sde_ka"), "Exponential", "DPMSolverMultistepScheduler",
             _SDE, stochastic=True),
    _Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "Exponential", "DPMSolverMultistepScheduler",
             {**_SDE, "solver_type": "heun"}, stochastic=True),
    _Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), "Karras"),
    _Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "Exponential"),
    _Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "Uniform", "EulerAncestralDiscreteScheduler", _LINSPACE,
             schedules=("Uniform",), stochastic=True),  # diffusers' ancestral Euler has the model's sigmas only
    _Sampler("Euler", ("k_euler",), "Uniform", "EulerDiscreteScheduler", _LINSPACE),
    _Sampler("LMS", ("k_lms",), "Uniform", "LMSDiscreteScheduler", _LINSPACE),
    _Sampler("Heun", ("k_heun",), "Uniform", "HeunDiscreteScheduler", _LINSPACE, second_order=True),
    _Sampler("DPM2", ("k_dpm_2",), "Karras", "KDPM2DiscreteScheduler", _LINSPACE, second_order=True),
    _Sampler("DPM2 a", ("k_dpm_2_a",), "Karras", "KDPM2AncestralDiscreteScheduler", _LINSPACE, second_order=True,
             stochastic=True),
    _Sampler("DPM fast", ("k_dpm_fast",)),
    _Sampler("DPM adaptive", ("k_dpm_ad",)),
    _Sampler("Restart", ("restart",), "Karras"),
    # A1111's timestep samplers take no schedule type. DDIM keeps the model config's CompVis "uniform"
    # discretisation (leading spacing, steps_offset 1), as A1111's DDIM does.
    _Sampler("DDIM", ("ddim",), "Automatic", "DDIMScheduler", {}, schedules=()),
    _Sampler("DDIM CFG++", ("ddim_cfgpp",), "Automatic"),
    _Sampler("PLMS", ("plms",), "Automatic"),
    _Sampler("UniPC", ("unipc",), "Automatic", "UniPCMultistepScheduler", _LINSPACE, schedules=()),
    _Sampler("LCM", ("k_lcm",), "Automatic"),
]
_BY_NAME = {key.lower(): s for s in _A1111 for key in (s.name, *s.aliases)}
A1111_SAMPLERS: tuple[str, ...] = tuple(s.name for s in _A1111)  # every name A1111 1.10 lists
RUNNABLE: tuple[str, ...] = tuple(s.name for s in _A1111 if s.scheduler_class)  # the ones this engine runs


def _info(s: _Sampler, requested: str) -> SamplerInfo:
    """The sampler with a schedule type: "Automatic" (A1111's default for it) or one it runs with here."""
    if requested == "Automatic" and s.automatic in ("Automatic", "Uniform"):
        return SamplerInfo(s.name, s.name, "Automatic", s.scheduler_class, dict(s.options), s.second_order,
                           s.stochastic)
    schedule = s.automatic if requested == "Automatic" else requested
    return SamplerInfo(f"{s.name} {schedule}", s.name, schedule, s.scheduler_class,
                       {**s.options, **_SIGMAS.get(schedule, {})}, s.second_order, s.stochastic)


def _table() -> dict[str, SamplerInfo]:
    table = {}
    for s in _A1111:
        if s.scheduler_class:
            for requested in ("Automatic", *s.schedules):
                info = _info(s, requested)
                table.setdefault(info.name, info)
    return table


# Every runnable sampler + schedule type, by its combined (pre-1.9 A1111) name: "DPM++ 2M Karras", "Euler a".
SAMPLERS: dict[str, SamplerInfo] = _table()


def runnable_summary() -> str:
    """One line for messages: what this engine runs, with the schedule types each takes."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for s in _A1111:
        if s.scheduler_class:
            groups.setdefault(tuple(dict.fromkeys(("Automatic", *s.schedules))), []).append(s.name)
    parts = [f"{', '.join(names)} (schedule type {' / '.join(schedules)})" for schedules, names in groups.items()]
    return ("; ".join(parts) + "; or the combined names, e.g. 'DPM++ 2M Karras'")


def _schedule_type(text: str) -> str:
    key = " ".join(str(text).split()).lower()
    for name in SCHEDULE_TYPES:
        if name.lower() == key:
            return name
    if key in _SCHEDULE_ALIASES:
        return _SCHEDULE_ALIASES[key]
    raise SamplerError(f"unknown schedule type {text!r}; A1111's are {', '.join(SCHEDULE_TYPES)}")


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; a name without a schedule type suffix -> ``(name,
    None)``. Aliases (``k_dpmpp_2m``) become A1111's names. Unknown names come back as given."""
    key = " ".join(str(name).split())
    if key.lower() in _BY_NAME:
        return _BY_NAME[key.lower()].name, None
    for schedule in sorted(SCHEDULE_TYPES, key=len, reverse=True):
        if key.lower().endswith(" " + schedule.lower()):
            base = key[: -len(schedule) - 1].strip()
            if base.lower() in _BY_NAME:
                return _BY_NAME[base.lower()].name, schedule
    return key, None


def get_sampler(name: str, schedule_type: str | None = None) -> SamplerInfo:
    """A1111 sampler `name` (any case, aliases, or a combined legacy name like ``DPM++ 2M Karras``) with an
    optional separate `schedule_type` (A1111 1.9+: ``Automatic``, ``Karras``, ...). ``Automatic`` means what it
    means in A1111: the sampler's own default (Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, the model's
    schedule for Euler a).

    Raises `SamplerError` naming what this engine can run when the name is unknown, when A1111 has it but this
    engine does not, or when the sampler does not run with that schedule type here.
    """
    base, suffix = split_sampler_name(name)
    wanted = _schedule_type(schedule_type) if schedule_type not in (None, "") else "Automatic"
    wanted = suffix or wanted  # as in A1111, a combined name's own schedule type wins
    s = _BY_NAME.get(base.lower())
    if s is None:
        raise SamplerError(f"unknown sampler {name!r}; this engine runs: {runnable_summary()}")
    if not s.scheduler_class:
        raise SamplerError(f"A1111's sampler {s.name!r} is not one this engine can run; this engine runs: "
                           f"{runnable_summary()}")
    if wanted != "Automatic" and wanted not in s.schedules:
        allowed = " / ".join(dict.fromkeys(("Automatic", *s.schedules)))
        raise SamplerError(f"{s.name} does not run with schedule type {wanted!r} here (it runs with {allowed}); "
                           f"this engine runs: {runnable_summary()}")
    return SAMPLERS[_info(s, wanted).name]


def is_second_order(name: str) -> bool:
    """True for samplers that call the model twice per step (A1111 doubles the prompt schedule for them)."""
    return get_sampler(name).second_order


def canonical_sampler(name: str) -> str | None:
    """A1111's spelling of `name` (any case, aliases, a combined name such as ``dpm++ 2m karras`` ->
    ``"DPM++ 2M Karras"``), whether or not this engine runs it; None if A1111 does not know it."""
    base, suffix = split_sampler_name(name)
    if base.lower() not in _BY_NAME:
        return None
    return f"{base} {suffix}" if suffix else base
