"""Which number format a model runs in, when the user leaves it to us (``dtype = "auto"``).

- CUDA: fp16. On every tensor-core GPU (Volta and later) fp16 runs at the same matrix rate as bf16 and
  twice the fp32/TF32 one, and it keeps three more mantissa bits than bf16, so its images stay closer to
  fp32's; it is also A1111's default, so a grid looks like the one a user made there. bf16 is better
  only where fp16 is slow or absent: GPUs before Volta (compute capability < 7) have no fp16 tensor cores,
  and there the automatic choice is fp32. SD1.5's fp16 VAE overflow (black images) is caught per image
  and that image is decoded again in fp32 (``denoise.decode_latents``); a UNet that diverges in fp16
  (NaN latents) is reported with the hint to use bf16 or fp32.
- MPS: fp16 (Apple GPUs run half precision natively).
- CPU: fp32 (CPU kernels are not faster in half precision and some are missing).

When fp32 is chosen or asked for on CUDA, matrix products and convolutions may use TF32 tensor cores
(``torch.set_float32_matmul_precision("high")``): 10 mantissa bits in the products, fp32 accumulation.
"""

from __future__ import annotations

AUTO = "auto"
DTYPE_NAMES = ("fp32", "fp16", "bf16")
DTYPE_CHOICES = (AUTO, *DTYPE_NAMES)


def default_dtype(device) -> str:
    """The dtype name ``auto`` means on `device` (a ``torch.device``)."""
    import torch

    if device.type == "cuda":
        major, _minor = torch.cuda.get_device_capability(device)
        return "fp16" if major >= 7 else "fp32"
    if device.type == "mps":
        return "fp16"
    return "fp32"


def resolve_dtype(name: str, device) -> str:
    """`name` unless it is ``auto``, else ``default_dtype(device)``; unknown names raise `UsageError`."""
    from expressiongrid.errors import UsageError

    if name == AUTO:
        return default_dtype(device)
    if name not in DTYPE_NAMES:
        raise UsageError(f"unknown dtype {name!r}; use one of: {', '.join(DTYPE_CHOICES)}")
    return name


def allow_tf32(device, dtype_name: str) -> bool:
    """Let fp32 matrix products use TF32 on CUDA; returns True when it did.

    This is torch's process-wide matmul precision setting: it affects only fp32 products, so models
    loaded in fp16/bf16 in the same process are unchanged.
    """
    import torch

    if device.type != "cuda" or dtype_name != "fp32":
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def resolve_study(study):
    """`study` with ``model.dtype = "auto"`` replaced by its meaning on the study's device.

    Called before planning: the dtype decides the pixels, so the concrete name goes into the cell keys,
    the dry-run plan and the run log (a folder resumed on another kind of device makes new cells).
    """
    import dataclasses

    from expressiongrid.engine.loading import pick_device

    if study.model.dtype != AUTO:
        return study
    device = pick_device(study.model.device)
    return dataclasses.replace(study, model=dataclasses.replace(study.model, dtype=default_dtype(device)))


def describe_settings(model_config, images: int | None = None) -> str:
    """``"cuda, fp16, torch.compile on"``: how a study's model will run for `images` images (dry run)."""
    from expressiongrid.engine.compiled import should_compile
    from expressiongrid.engine.loading import pick_device

    device = pick_device(model_config.device)
    dtype = resolve_dtype(model_config.dtype, device)
    compiled = should_compile(getattr(model_config, "compile", "auto"), device, images)
    tf32 = " (TF32 matmuls)" if device.type == "cuda" and dtype == "fp32" else ""
    return f"{device}, {dtype}{tf32}, {'torch.compile on' if compiled else 'not compiled'}"
