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
