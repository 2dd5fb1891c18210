"""Per-image random number generators and initial noise.

Every image owns one `torch.Generator` seeded with its seed. The initial latent noise is drawn from it
first (shape ``(1, 4, H/8, W/8)``, like A1111's per-image ``(4, H/8, W/8)`` draw), and ancestral/SDE
samplers keep drawing from the same generator, so an image's noise never depends on which other images
share its batch. Nothing here reads torch's global RNG.
"""

from __future__ import annotations

NOISE_SOURCES = ("cpu", "gpu")


def make_generators(seeds: list[int], noise_source: str, device) -> list:
    """One generator per seed.

    ``cpu`` (the default) draws on the CPU, so a seed gives the same image on any machine; ``gpu`` draws on
    the model's device like A1111's default "GPU" RNG (on a CPU-only machine that is the CPU again).
    """
    import torch

    from expressiongrid.errors import UsageError

    if noise_source not in NOISE_SOURCES:
        raise UsageError(f"unknown noise source {noise_source!r}; use one of: {', '.join(NOISE_SOURCES)}")
    device = torch.device(device)
    gen_device = device if (noise_source == "gpu" and device.type in ("cuda", "mps")) else torch.device("cpu")
    return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list, shape: tuple[int, int, int], device, dtype):
    """Initial latents ``[len(generators), *shape]``: one fp32 draw per image, then cast to `dtype`.

    Drawing in fp32 and casting keeps the noise of a seed identical across fp16/bf16/fp32 models.
    """
    import torch

    draws = [torch.randn((1, *shape), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.cat(draws).to(device=device, dtype=dtype)
