"""`generate`: image requests in, images out, batched.

Requests that share steps, sampler, size and noise source are denoised together (one UNet call per model
evaluation for the whole batch, one VAE decode per batch). Out-of-memory halves the batch and retries;
at batch size 1 only the affected request fails.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from expressiongrid.samplers import SamplerInfo, get_sampler
from expressiongrid.errors import UsageError

MAX_AUTO_BATCH = 16

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRequest:
    """One image to make. Prompts are in A1111 syntax; `sampler` is an A1111 sampler name."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "Euler a"
    noise_source: str = "cpu"


@dataclass
class ImageResult:
    """The outcome of one request. `image` is None when `ok` is False (`error` says why)."""

    image: object  # PIL.Image.Image | None
    seed: int
    ok: bool
    error: str | None
    nan_retried: bool
    seconds: float


def validate_request(req: ImageRequest) -> SamplerInfo:
    """Check a request before any model work; returns its sampler. Raises `UsageError`/`SamplerError`."""
    from expressiongrid.engine.noise import NOISE_SOURCES

    info = get_sampler(req.sampler)
    if req.width % 8 or req.height % 8 or req.width < 8 or req.height < 8:
        raise UsageError(f"size {req.width}x{req.height}: width and height must be positive multiples of 8")
    if req.steps < 1:
        raise UsageError(f"steps must be at least 1 (got {req.steps})")
    if req.noise_source not in NOISE_SOURCES:
        raise UsageError(f"unknown noise source {req.noise_source!r}; use one of: {', '.join(NOISE_SOURCES)}")
    return info


def bytes_per_image(width: int, height: int, dtype) -> int:
    """A deliberately generous estimate of the peak memory one image adds to a batch.

    The VAE decode dominates (its 128-channel full-resolution activations); measured SD1.5 peaks are about
    2.5 GB per 512x512 image in fp16 with SDPA, scaled here by pixel count and element size.
    """
    import torch

    elem = torch.finfo(dtype).bits // 8
    return int(2.5e9 * (width * height) / (512 * 512) * elem / 2)


def free_memory(device) -> int:
    """Bytes free for activations on `device` (CUDA: the driver's free memory plus what torch's caching
    allocator holds unused; otherwise available RAM).

    After a batch, torch keeps the freed blocks reserved for the next one; the driver counts them as used,
    so its figure alone would shrink every later batch size estimate.
    """
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_batch_size(device, width: int, height: int, dtype, free_bytes: int | None = None,
                    limit: int = MAX_AUTO_BATCH) -> int:
    """Largest batch that fits in 80 % of free memory by `bytes_per_image`, between 1 and `limit`.

    On the CPU bigger batches buy little throughput, so the limit there is 8.
    """
    free = free_memory(device) if free_bytes is None else free_bytes
    if device.type == "cpu":
        limit = min(limit, 8)
    return max(1, min(limit, int(free * 0.8) // max(1, bytes_per_image(width, height, dtype))))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU out-of-memory errors (torch.OutOfMemoryError, or MPS's RuntimeError text)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    # MPS raises RuntimeError("MPS backend out of memory ..."); the CPU allocator "can't allocate memory".
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def prompt_encoder(model, embeddings: dict[int, list[int]] | None = None, cache=None):
    """The model's ``PromptEncoder`` (its clip skip) with textual-inversion `embeddings` registered;
    `cache` is an ``EncodingCache.scope`` naming the text encoder's state (rows are then kept across
    batches and columns), or None for rows kept by this encoder only."""
    from expressiongrid.prompts.conditioning import PromptEncoder

    pipe = model.pipe
    return PromptEncoder(pipe.tokenizer, pipe.text_encoder, clip_skip=model.clip_skip, embeddings=embeddings,
                         cache=cache)


def batch_size_for(model, width: int, height: int, cap: int | None = None) -> int:
    """Images per UNet batch: the user's `cap` when given, else what fits in free memory (an estimate;
    ``generate`` still halves a batch that runs out of memory), and never more than half a batch of this
    size that already ran out of memory on this model. The one place batch sizes are decided."""
    limit = getattr(model, "batch_limits", {}).get((width, height))
    if cap is None:
        try:
            cap = max(1, auto_batch_size(model.device, width, height, model.dtype))
        except Exception as exc:  # noqa: BLE001 - an estimate only
            logger.warning("could not estimate a batch size from free memory (%s); using 4", exc)
            cap = 4
    return cap if limit is None else min(cap, limit)


def generate(model, requests: list[ImageRequest], batch_size: int | None = None,
             progress: Callable[[int], None] | None = None, encoder=None,
             embeddings: dict[int, list[int]] | None = None) -> list[ImageResult]:
    """Make one image per request, in request order.

    `model` is a `LoadedModel`. Requests sharing steps/sampler/size/noise source are denoised together
    in batches of `batch_size` (default: `auto_batch_size` from free memory). `progress(n_done)` is called
    after every batch with the number of images finished so far. `encoder` (default: the model's
    ``PromptEncoder`` with `embeddings`) turns prompts into scheduled conditioning. All requests are
    validated before any model work; invalid ones raise.
    """
    infos = [validate_request(r) for r in requests]
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch size must be at least 1 (got {batch_size})")
    encoder = encoder if encoder is not None else prompt_encoder(model, embeddings)

    groups: dict[tuple, list[int]] = {}
    for i, (req, info) in enumerate(zip(requests, infos)):
        groups.setdefault((req.steps, info.name, req.width, req.height, req.noise_source), []).append(i)

    results: list[ImageResult | None] = [None] * len(requests)
    done = 0
    for (_steps, _name, width, height, _src), indices in groups.items():
        size = batch_size_for(model, width, height, batch_size)
        for chunk, batch_results in _batches_with_oom_fallback(model, requests, infos, indices, size, encoder):
            for i, res in zip(chunk, batch_results):
                results[i] = res
            done += len(chunk)
            if progress is not None:
                progress(done)
    return results  # type: ignore[return-value]


def _batches_with_oom_fallback(model, requests, infos, indices: list[int], size: int, encoder):
    """Yield ``(request indices, results)`` per finished batch of one group.

    On out-of-memory the batch and the rest of the group continue at half its size (remembered on the
    model for later calls, ``batch_size_for``); a single request that runs out of memory gets a failed result. Any other error
    propagates.
    """
    pending = [indices[k:k + size] for k in range(0, len(indices), size)]
    while pending:
        chunk = pending.pop(0)
        try:
            batch_results = _run_batch(model, [requests[i] for i in chunk], infos[chunk[0]], encoder)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            yield chunk, batch_results  # outside the try: errors of the caller's progress hook are not ours
            continue
        # Only now, with the exception gone: its traceback held the failed batch's frames and their tensors.
        _empty_cache(model.device)
        if len(chunk) == 1:
            failed = ImageResult(None, requests[chunk[0]].seed, False, f"out of memory at batch size 1: {message}",
                                 False, 0.0)
            yield chunk, [failed]
            continue
        half = len(chunk) // 2
        size = min(size, half)
        _remember_limit(model, requests[chunk[0]], len(chunk))
        rest = chunk + [i for c in pending for i in c]
        pending = [rest[k:k + size] for k in range(0, len(rest), size)]


def _remember_limit(model, request: ImageRequest, failed: int) -> None:
    """A batch of `failed` images ran out of memory: later batches of this image size (the next column,
    the next call of `generate`) start at half of it instead of running out of memory first each time.
    A batch larger than the limit already known tells nothing new."""
    limits = getattr(model, "batch_limits", None)
    key = (request.width, request.height)
    if limits is None or failed > limits.get(key, failed):
        return
    limits[key] = failed // 2
    logger.warning("out of memory at batch size %d: batches of %dx%d images are at most %d from now on",
                   failed, request.width, request.height, failed // 2)


def _empty_cache(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def encode_batch(encoder, requests: list[ImageRequest], num_calls: int):
    """(cond, uncond) scheduled conditioning for a batch.

    Positive prompts lose their extra-network tags and are split on AND (composable diffusion); negative
    prompts are encoded as written, without AND splitting (A1111 does the same).
    """
    from expressiongrid.prompts import extract_networks

    positives = [extract_networks(r.prompt)[0] for r in requests]
    negatives = [r.negative_prompt for r in requests]
    return encoder.encode_schedules(positives, num_calls, split_and=True), encoder.encode_schedules(negatives, num_calls)


def _run_batch(model, requests: list[ImageRequest], info: SamplerInfo, encoder) -> list[ImageResult]:
    import torch

    from expressiongrid.prompts import total_model_calls
    from expressiongrid.engine.denoise import decode_latents, denoise_batch, to_pil
    from expressiongrid.engine.noise import initial_noise, make_generators
    from expressiongrid.engine.schedulers import make_scheduler, set_timesteps

    start = time.perf_counter()
    pipe, first = model.pipe, requests[0]
    seeds = [r.seed for r in requests]
    with torch.inference_mode():
        cond, uncond = encode_batch(encoder, requests, total_model_calls(first.steps, info.name))
        scheduler = make_scheduler(info.name, pipe.scheduler.config)
        set_timesteps(scheduler, first.steps, model.device)
        generators = make_generators(seeds, first.noise_source, model.device)
        shape = (pipe.unet.config.in_channels, first.height // 8, first.width // 8)
        latents = initial_noise(generators, shape, model.device, model.dtype)
        latents = denoise_batch(model.unet_call or pipe.unet, scheduler, latents, cond, uncond,
                                [r.cfg_scale for r in requests], generators=generators, seeds=seeds)
        decoded = decode_latents(pipe.vae, latents, decode=model.vae_decode)
    images = to_pil(decoded.pixels)
    seconds = (time.perf_counter() - start) / len(requests)
    return [
        ImageResult(image=None if err else img, seed=seed, ok=err is None, error=err, nan_retried=retried,
                    seconds=seconds)
        for img, seed, err, retried in zip(images, seeds, decoded.errors, decoded.nan_retried)
    ]


__all__ = ["ImageRequest", "ImageResult", "auto_batch_size", "batch_size_for", "generate", "prompt_encoder"]
