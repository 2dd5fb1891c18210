"""Per-image random number generators and initial noise.

Every image owns one `torch.Generator` seeded with its seed. The initial latent noise is drawn from it
first (shape ``(1, 4, H/8, W/8)``, like A1111's per-image ``(4, H/8, W/8)`` draw), and ancestral/SDE
samplers keep drawing from the same generator, so an image's noise never depends on which other images
share its batch. Nothing here reads torch's global RNG.
"""

from __future__ import annotations

import sys
import threading

NOISE_SOURCES = ("cpu", "gpu")


def make_generators(seeds: list[int], noise_source: str, device) -> list:
    """One generator per seed.

    ``cpu`` (the default) draws on the CPU, so a seed gives the same image on any machine; ``gpu`` draws on
    the model's device like A1111's default "GPU" RNG. Asking for ``gpu`` on a model without a GPU is refused
    (``check_noise_source``): CPU noise would make other images than the metadata's ``RNG`` promises.
    """
    import torch

    device = torch.device(device)
    check_noise_source(noise_source, device)
    gen_device = device if noise_source == "gpu" else torch.device("cpu")
    return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]


def check_noise_source(noise_source: str, device) -> None:
    """Refuse an unknown noise source, and GPU noise for a model that runs on the CPU."""
    from expressiongrid.errors import UsageError

    if noise_source not in NOISE_SOURCES:
        raise UsageError(f"unknown noise source {noise_source!r}; use one of: {', '.join(NOISE_SOURCES)}")
    kind = getattr(device, "type", str(device).split(":")[0])
    if noise_source == "gpu" and kind not in ("cuda", "mps"):
        raise UsageError(f"noise_source = \"gpu\" needs a CUDA or MPS device but the model runs on {kind}; "
                         "use noise_source = \"cpu\" (A1111's RNG setting \"CPU\": the same images on any machine)")


def initial_noise(generators: list, shape: tuple[int, int, int], device, dtype):
    """Initial latents ``[len(generators), *shape]``: one fp32 draw per image, then cast to `dtype`.

    Drawing in fp32 and casting keeps the noise of a seed identical across fp16/bf16/fp32 models.
    """
    import torch

    draws = [torch.randn((1, *shape), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return to_device(torch.cat(draws), torch.device(device)).to(dtype)


def to_device(tensor, device):
    """`tensor` on `device`; a CPU tensor goes to CUDA through pinned memory without blocking the host."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# -- per-step noise of CPU generators, prepared for the whole batch ------------------------------------
#
# Stochastic diffusers schedulers (Euler a, Euler, DPM2 a, DPM++ 2M SDE, ...) draw their per-step noise in
# ``step`` through their module's ``randn_tensor``: with a list of CPU generators and a CUDA model that is
# one small draw per image and a blocking host-to-device copy on every step, which stalls the GPU queue.
# There is no argument to hand them noise (only DDIM and DPM++ multistep take ``variance_noise``), so each
# scheduler module's ``randn_tensor`` is wrapped once: while a `PreparedNoise` is active on this thread
# and the scheduler asks with that batch's own generator list, it gets the next step's noise from a batch
# drawn ahead and copied once; every other call goes to diffusers' function unchanged.

_active = threading.local()
_install_lock = threading.Lock()


# Prepared noise drawn and copied at once, at most (pinned host memory plus as much on the GPU): a long,
# large batch (1000 steps of 16 images at 1024 px is 2 GB) is drawn in several parts instead.
MAX_PREPARED_BYTES = 256 << 20


class PreparedNoise:
    """Per-step noise for one batch's generators, drawn ahead on the CPU and copied to `device` at once.

    The draws are the very calls diffusers' ``randn_tensor`` makes (per image, shape ``(1, ...)``, the
    model's dtype, in step order), so the noise is bit-identical to drawing step by step. Up to
    `max_draws` steps are drawn at the first request (the scheduler's own first step, so the host draws
    while the GPU runs the first UNet call), in parts of at most `MAX_PREPARED_BYTES`; unused draws are
    discarded with the batch's generators.
    """

    def __init__(self, generators: list, device, max_draws: int):
        self.generators = generators
        self.device = device
        self.max_draws = max_draws
        self._served = 0
        self._noise = None
        self._key = None

    def next(self, shape, dtype, device):
        import torch

        from expressiongrid.errors import GenerationError

        key = (tuple(shape), dtype)
        if self._noise is not None and key != self._key:
            raise GenerationError(f"prepared sampler noise does not cover draw {self._served} of shape {shape}")
        if self._noise is None or self._served - self._first >= self._noise.shape[0]:
            if self._served >= max(1, self.max_draws):
                raise GenerationError(f"prepared sampler noise does not cover draw {self._served} of shape {shape}")
            per_step = max(1, torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size())
            count = max(1, min(self.max_draws - self._served, MAX_PREPARED_BYTES // per_step))
            per_image = (1, *tuple(shape)[1:])
            draws = [torch.cat([torch.randn(per_image, generator=g, device=g.device, dtype=dtype)
                                for g in self.generators]) for _ in range(count)]
            self._noise, self._key, self._first = to_device(torch.stack(draws), torch.device(device)), key, self._served
        noise = self._noise[self._served - self._first]
        self._served += 1
        return noise

    def __enter__(self):
        if getattr(_active, "noise", None) is not None:
            raise RuntimeError("a PreparedNoise is already active on this thread")
        _active.noise = self
        return self

    def __exit__(self, *exc):
        _active.noise = None
        return False


def _serving(original):
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        prepared = getattr(_active, "noise", None)
        if prepared is not None and generator is prepared.generators:
            return prepared.next(shape, dtype, device)
        return original(shape, generator=generator, device=device, dtype=dtype, layout=layout)

    randn_tensor.prepared_noise_original = original
    return randn_tensor


def serve_prepared_noise(scheduler) -> bool:
    """Wrap `scheduler`'s module-level ``randn_tensor`` (once) so a `PreparedNoise` can answer it.

    Returns False for schedulers that do not draw through ``randn_tensor`` (DPM++ SDE's Brownian trees).
    """
    module = sys.modules[type(scheduler).__module__]
    with _install_lock:
        current = getattr(module, "randn_tensor", None)
        if current is None:
            return False
        if not hasattr(current, "prepared_noise_original"):
            module.randn_tensor = _serving(current)
    return True
