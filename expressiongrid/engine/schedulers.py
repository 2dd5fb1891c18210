"""Diffusers schedulers for the A1111 samplers of ``expressiongrid.samplers``."""

from __future__ import annotations

from typing import Any

from expressiongrid.samplers import get_sampler


def make_scheduler(name: str, base_config: dict | Any):
    """A fresh diffusers scheduler for A1111 sampler `name`, built on the model's scheduler config.

    `base_config` is the model's scheduler config (``pipe.scheduler.config`` or a plain dict). A new
    instance is returned every call: multistep schedulers keep per-run state and must not be shared.
    """
    import diffusers

    info = get_sampler(name)
    config = dict(base_config)
    for private in [k for k in config if k.startswith("_")]:
        config.pop(private)
    config.update(info.options)
    cls = getattr(diffusers, info.scheduler_class)
    return cls.from_config(config)


# Schedulers whose ``step`` looks up host tables with the timestep itself: diffusers' DDIM reads
# ``alphas_cumprod[timestep]`` (a CPU table) and branches on ``prev_timestep >= 0``. Given device timesteps,
# both read a GPU scalar back, so the host waits for the step to finish twice per step; given host
# timesteps the same lookups stay on the host. The UNet gets a device copy (see ``denoise_batch``).
HOST_TIMESTEP_SCHEDULERS = ("DDIMScheduler",)


def set_timesteps(scheduler, steps: int, device) -> None:
    """``scheduler.set_timesteps(steps)`` for a denoising loop that reads nothing back from the device.

    The timesteps go on `device`, or on the host for the schedulers of `HOST_TIMESTEP_SCHEDULERS` (same
    values either way). Schedulers that count steps start counting at 0 (``set_begin_index(0)``): left to
    themselves they find their first step by searching the device timesteps for the first one
    (``nonzero().item()``), which waits for the device once per batch, to get the same 0.
    """
    host = type(scheduler).__name__ in HOST_TIMESTEP_SCHEDULERS
    scheduler.set_timesteps(steps, device="cpu" if host else device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
