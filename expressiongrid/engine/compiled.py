"""``torch.compile`` for the UNet and the VAE decode, with static shapes.

Compiled code is specialised to the shapes it saw (``dynamic=False``): a new batch size would compile
again (a minute or more at SD1.5 size on a GPU). So calls are padded: a batch is padded with copies of its
last row up to the smallest batch size already compiled for the same per-image shapes, and only a batch
larger than every compiled one compiles a new size. A run whose batches are the rows of a column compiles
once; the last, shorter batch of a column reuses the full-size code. Padding rows are computed and dropped;
rows never mix in the UNet or the VAE, so a row's result does not depend on the padding (up to the
kernels' rounding for a different batch size, the same as batching itself).

What keeps a run at one compilation:

- LoRA columns write their deltas into the existing weight tensors in place
  (``characters.CharacterActivator``): same parameters, same shapes, no new modules, nothing for the
  compiled code's guards to notice. diffusers' ``fuse_lora``/peft layers would add modules and recompile.
- Textual-inversion embeddings live in the text encoder, which is not compiled; the UNet sees the same
  ``[batch, 77·k, 768]`` conditioning.
- What does compile again: a longer prompt (another 75-token chunk changes the conditioning's shape; it
  is not padded, since extra tokens would change the cross-attention and the pixels), another image
  size, and the fp32 decode retry, which runs the uncompiled VAE instead.
- Inputs are normalised before they reach the compiled code, since dynamo guards on dtype and strides:
  the timestep goes in as float32 (DDIM, UniPC and DPM++ 2M schedulers give int64 timesteps, Euler and
  the other k-samplers float32; the UNet's time embedding casts it to float32 first thing, so the
  numbers are the same) and the sample as a contiguous tensor (a channels-last UNet returns
  channels-last noise predictions, which a scheduler may pass on into the next step's latents).
- A batch size that ran out of memory is forgotten, so the smaller batches ``generate`` retries with
  are not padded back up to it (they compile their own size instead).
- Every shape is one entry in dynamo's cache for the UNet's ``forward``; with ``fullgraph=True`` a
  full cache is an error, not a silent fallback, so the limit is raised from dynamo's default of 8
  to `RECOMPILE_LIMIT` (a study over several sizes, prompt lengths and batch sizes can pass 8).

``auto`` compiles on CUDA only, and only for runs of at least `COMPILE_MIN_IMAGES` images when the
caller knows the count (the runner does): compiling SD1.5's UNet and VAE takes about a minute, and a
compiled step saves a fraction of a step's time, so a grid of a few hundred images finishes sooner
uncompiled (`break_even_images`). On a CPU the
compile time is not earned back by one grid, and on MPS torch.compile is not mature.
"""

from __future__ import annotations

import importlib.util

COMPILE_CHOICES = ("auto", "on", "off")
# Compiling pays once the seconds it saves per image add up to the seconds it takes. Estimates, SD1.5 at
# 512 px, 20 steps, fp16, a 9-row batch on an H100-class GPU: a cold inductor compile of the UNet and the
# VAE decode ~60 s; an eager image ~0.1 s (about half the FLOP floor); compiled ~20 % faster (PyTorch's
# published diffusion figures). scripts/gpu_check.py measures all three and prints the break-even it implies
# (`compile_break_even`); set these from its figures.
COMPILE_SECONDS = 60.0
EAGER_SECONDS_PER_IMAGE = 0.1
COMPILED_SECONDS_PER_IMAGE = 0.08


def break_even_images(compile_seconds: float, eager_seconds_per_image: float,
                      compiled_seconds_per_image: float) -> int | None:
    """Images after which a compiled run has caught up with an eager one (None: compiling never pays)."""
    import math

    saved = eager_seconds_per_image - compiled_seconds_per_image
    return math.ceil(compile_seconds / saved) if saved > 0 else None


COMPILE_MIN_IMAGES = break_even_images(COMPILE_SECONDS, EAGER_SECONDS_PER_IMAGE, COMPILED_SECONDS_PER_IMAGE)
# Compiled shapes per compiled function (dynamo's default is 8); each costs about a minute to compile.
RECOMPILE_LIMIT = 64


def should_compile(choice: str, device, images: int | None = None) -> bool:
    """Whether `choice` (``auto``/``on``/``off``) compiles on `device` for a run of `images` images
    (None: unknown, counted as large); unknown choices raise `UsageError`."""
    from expressiongrid.errors import UsageError

    if choice not in COMPILE_CHOICES:
        raise UsageError(f"unknown compile setting {choice!r}; use one of: {', '.join(COMPILE_CHOICES)}")
    if choice == "auto":
        return (device.type == "cuda" and importlib.util.find_spec("triton") is not None
                and (images is None or images >= COMPILE_MIN_IMAGES))
    return choice == "on"


class BatchBuckets:
    """The batch sizes compiled so far, per per-image signature; picks the size a batch is padded to."""

    def __init__(self):
        self._sizes: dict[tuple, list[int]] = {}

    def size_for(self, n: int, signature: tuple) -> int:
        sizes = self._sizes.setdefault(signature, [])
        fitting = [s for s in sizes if s >= n]
        if fitting:
            return min(fitting)
        sizes.append(n)
        return n

    def forget(self, size: int, signature: tuple) -> None:
        """Stop padding to `size` (it ran out of memory); a batch that needs it again compiles it again."""
        sizes = self._sizes.get(signature, [])
        if size in sizes:
            sizes.remove(size)

    def compiled_sizes(self) -> dict[tuple, list[int]]:
        return {k: sorted(v) for k, v in self._sizes.items()}


def _pad_rows(tensor, size: int):
    """`tensor` padded to `size` rows with copies of its last row, contiguous (the layout compiled for)."""
    import torch

    n = tensor.shape[0]
    if size == n:
        return tensor.contiguous()
    return torch.cat([tensor, tensor[-1:].expand(size - n, *tensor.shape[1:])]).contiguous()


def _raise_recompile_limit() -> None:
    from torch._dynamo import config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def _run_padded(buckets: BatchBuckets, signature: tuple, n: int, call):
    """``call(size)`` at the bucket size for `n` rows; a size that runs out of memory is forgotten."""
    from expressiongrid.engine.generation import is_out_of_memory

    size = buckets.size_for(n, signature)
    try:
        return call(size)
    except Exception as exc:
        if is_out_of_memory(exc):
            buckets.forget(size, signature)
        raise


class CompiledUNet:
    """A compiled UNet called like ``unet(sample, t, encoder_hidden_states=..., return_dict=False)``.

    Shares its parameters with `unet` (writes into `unet`'s weights reach the compiled code).
    """

    def __init__(self, unet, *, backend: str = "inductor", mode: str | None = None):
        import torch

        self.unet = unet
        self.config = unet.config
        self.buckets = BatchBuckets()
        _raise_recompile_limit()
        self._compiled = torch.compile(unet, backend=backend, mode=mode, dynamic=False, fullgraph=True)

    def __call__(self, sample, timestep, encoder_hidden_states, return_dict: bool = False):
        import torch

        n = sample.shape[0]
        signature = (tuple(sample.shape[1:]), tuple(encoder_hidden_states.shape[1:]), sample.dtype)
        if torch.is_tensor(timestep) and timestep.dtype != torch.float32:
            timestep = timestep.to(torch.float32)  # one graph for int64 and float32 schedulers (same embedding)

        def call(size):
            return self._compiled(_pad_rows(sample, size), timestep,
                                  encoder_hidden_states=_pad_rows(encoder_hidden_states, size), return_dict=False)[0]

        return (_run_padded(self.buckets, signature, n, call)[:n],)


class CompiledDecode:
    """The VAE's ``decode`` compiled, called as ``decode(latents) -> images`` (already unscaled latents)."""

    def __init__(self, vae, *, backend: str = "inductor", mode: str | None = None):
        import torch

        self.vae = vae
        self.buckets = BatchBuckets()
        _raise_recompile_limit()
        self._compiled = torch.compile(vae.decode, backend=backend, mode=mode, dynamic=False, fullgraph=True)

    def __call__(self, latents):
        n = latents.shape[0]
        signature = (tuple(latents.shape[1:]), latents.dtype)
        return _run_padded(self.buckets, signature, n,
                           lambda size: self._compiled(_pad_rows(latents, size), return_dict=False)[0])[:n]


def compile_parts(unet, vae, *, backend: str = "inductor", mode: str | None = None):
    """``(CompiledUNet, CompiledDecode)`` for a model's UNet and VAE (compilation happens at first call)."""
    return CompiledUNet(unet, backend=backend, mode=mode), CompiledDecode(vae, backend=backend, mode=mode)
