"""The generation engine: models, samplers, seeds and the batched denoising loop.

Names are imported lazily so that importing this package (for `--help`, study validation or sampler
names) does not import torch or diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelSpec": "loading", "LoadedModel": "loading", "load_model": "loading", "pick_device": "loading",
    "SD15_CONFIG_DIR": "loading",
    "make_scheduler": "schedulers",
    "ImageRequest": "generation", "ImageResult": "generation", "generate": "generation",
    "auto_batch_size": "generation", "batch_size_for": "generation", "prompt_encoder": "generation",
    "denoise_batch": "denoise", "decode_latents": "denoise",
    "make_generators": "noise", "initial_noise": "noise",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"expressiongrid.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'expressiongrid.engine' has no attribute {name!r}")
