"""The batched denoising loop and the VAE decode with per-image NaN/inf checks.

One UNet call per model evaluation for the whole batch: rows may have different prompt schedules,
negative prompts, seeds and CFG scales. Conditioning comes as two tables (cond, uncond) of every distinct
schedule text plus an index matrix ``[rows, num_calls]`` (see ``prompts.conditioning``); model call ``i``
gathers ``table[index[:, i]]``, so each row switches its prompt exactly at the call the prompt-language
rule gives it, with no per-row Python in the loop.

Cond and uncond of different token lengths (a 154-token prompt with a 77-token negative prompt) cannot be
stacked into one UNet batch. Like A1111's default (``pad_cond_uncond`` off) they are then run as two UNet
calls instead of padding: padding changes the cross-attention and with it the pixels, and an image must
look the same whether it was made alone or in a batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass
class DecodedBatch:
    """Decoded images (host ``uint8 [B, H, W, 3]``) and per-image numeric health."""

    pixels: object  # torch.Tensor
    errors: list[str | None]  # None when the image is fine
    nan_retried: list[bool]  # True when the fp32 decode retry was used for that image


def _predict_noise(unet, x, x_cond, t, uncond_ctx, cond_ctx):
    """UNet noise predictions for uncond (rows of `x`) and cond (rows of `x_cond`).

    One call when the contexts have the same token length, else one call each (see module docstring).
    """
    import torch

    if uncond_ctx.shape[1] == cond_ctx.shape[1]:
        out = unet(torch.cat([x, x_cond]), t, encoder_hidden_states=torch.cat([uncond_ctx, cond_ctx]),
                   return_dict=False)[0]
        return out[: x.shape[0]], out[x.shape[0]:]
    eps_u = unet(x, t, encoder_hidden_states=uncond_ctx, return_dict=False)[0]
    eps_c = unet(x_cond, t, encoder_hidden_states=cond_ctx, return_dict=False)[0]
    return eps_u, eps_c


def _cond_parts(cond, batch: int, device, dtype):
    """(row of each cond part, its weight, its index [parts, num_calls], slots) for composable diffusion (AND).

    Without ``part_index`` every row has one part of weight 1 (and slots is None). Parts of weight 0
    (padding for rows with fewer AND parts) contribute nothing, so they are left out of the UNet batch.
    Slot ``k`` is ``(positions, rows)`` of every row's k-th part: each row at most once, so adding slot by
    slot sums a row's parts in order with no two additions to one row at once. (One ``index_add_`` over
    all parts would do that on the CPU, but on CUDA it adds with atomics, in no fixed order: with three
    or more parts the images would change in the last bits from run to run.)
    """
    import torch

    from expressiongrid.engine.noise import to_device

    part_index = getattr(cond, "part_index", None)
    part_weights = getattr(cond, "part_weights", None)
    if part_index is None or part_weights is None:
        rows = torch.arange(batch, device=device)
        return rows, None, cond.index.to(device), None
    weights = part_weights.detach().to(device="cpu", dtype=dtype)  # one copy to the host per batch
    rows, parts = torch.nonzero(weights != 0, as_tuple=True)
    slots = [(to_device(pos, device), to_device(rows[pos], device))
             for pos in (torch.nonzero(parts == k).flatten() for k in torch.unique(parts).tolist())]
    weights = to_device(weights[rows, parts].view(-1, 1, 1, 1), device)
    rows, parts = to_device(rows, device), to_device(parts, device)
    return rows, weights, part_index.to(device)[rows, parts], slots


def denoise_batch(unet, scheduler, latents, cond, uncond, guidance_scale, generators=None, seeds=None,
                  prepare_noise: bool | None = None):
    """Run the sampler over a batch and return the final latents.

    - `scheduler`: a fresh diffusers scheduler with ``set_timesteps`` already called.
    - `latents`: unit-variance initial noise ``[B, 4, h, w]`` (scaled here by ``init_noise_sigma``).
    - `cond`, `uncond`: objects with ``.table [n_texts, L, C]`` and ``.index [B, num_calls]`` (the
      ``ScheduledConditioning`` of ``prompts.conditioning``); ``num_calls`` must cover every model call
      (``total_model_calls(steps, sampler)``). When `cond` also has ``part_index [B, parts, num_calls]``
      and ``part_weights [B, parts]`` (prompts split on AND), A1111's composable diffusion is applied:
      ``uncond + cfg * sum_k weight_k * (cond_k - uncond)``.
    - `guidance_scale`: one CFG scale per row.
    - `generators`: one ``torch.Generator`` per row, passed to ``scheduler.step`` so ancestral/SDE noise
      of each image comes from its own stream; `seeds` seed the Brownian trees of DPM++ SDE per image.
    - `prepare_noise`: draw the sampler's per-step noise for the whole batch ahead and copy it to the
      latents' device at once (``noise.PreparedNoise``; the same numbers as drawing step by step).
      Default: when the generators live on another device than the latents (CPU noise, CUDA model).
    - `unet` may be the model's ``CompiledUNet`` (same call signature).

    Each iteration over ``scheduler.timesteps`` is exactly one model evaluation (second-order schedulers
    in diffusers interleave their two evaluations as separate timesteps), so the loop index is A1111's
    denoiser call counter.
    """
    import torch

    from expressiongrid.errors import GenerationError

    batch = latents.shape[0]
    device, dtype = latents.device, latents.dtype
    if cond.index.shape[0] != batch or uncond.index.shape[0] != batch:
        raise GenerationError(
            f"conditioning has {cond.index.shape[0]} cond / {uncond.index.shape[0]} uncond rows for {batch} latents"
        )
    num_calls = min(cond.index.shape[1], uncond.index.shape[1])
    timesteps = scheduler.timesteps
    if len(timesteps) > num_calls:
        raise GenerationError(
            f"the prompt schedule covers {num_calls} model calls but the sampler makes {len(timesteps)}; "
            "build it with total_model_calls(steps, sampler)"
        )
    # CFG scales in at least fp32: an fp16/bf16 scale would round 6.3 to 6.30 / 6.31. diffusers multiplies by
    # a Python float, which CUDA and CPU kernels hold in fp32 and round the product once to the model dtype.
    scale_dtype = torch.promote_types(dtype, torch.float32)
    scales = torch.as_tensor(list(guidance_scale), dtype=scale_dtype, device=device).view(batch, 1, 1, 1)
    cond_table = cond.table.to(device=device, dtype=dtype)
    uncond_table = uncond.table.to(device=device, dtype=dtype)
    uncond_index = uncond.index.to(device)

    step_kwargs = {}
    if generators is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = list(generators)
    if seeds is not None and hasattr(scheduler, "noise_sampler_seed"):
        # DPM++ SDE draws from Brownian trees; one tree per image seeded with its seed (as A1111 does).
        scheduler.noise_sampler_seed = [int(s) for s in seeds] if batch > 1 else int(seeds[0])

    part_rows, part_weights, part_index, part_slots = _cond_parts(cond, batch, device, dtype)
    latents = latents * scheduler.init_noise_sigma
    with _step_noise(scheduler, step_kwargs.get("generator"), device, len(timesteps), prepare_noise):
        return _loop(unet, scheduler, latents, timesteps, cond_table, uncond_table, part_index, uncond_index,
                     part_rows, part_weights, part_slots, scales, step_kwargs)


def _step_noise(scheduler, generators, device, num_calls: int, prepare: bool | None):
    """The context that serves the sampler's per-step noise from a `PreparedNoise` (or does nothing)."""
    import contextlib

    from expressiongrid.engine.noise import PreparedNoise, serve_prepared_noise

    if generators is None:
        return contextlib.nullcontext()
    if prepare is None:
        prepare = any(g.device.type != device.type for g in generators)
    if not prepare or not serve_prepared_noise(scheduler):
        return contextlib.nullcontext()
    return PreparedNoise(generators, device, num_calls)


def _loop(unet, scheduler, latents, timesteps, cond_table, uncond_table, part_index, uncond_index, part_rows,
          part_weights, part_slots, scales, step_kwargs):
    import torch

    # A scheduler that keeps its timesteps on the host (``schedulers.HOST_TIMESTEP_SCHEDULERS``) gets them as
    # they are; the UNet gets them from one copy to the latents' device, made here rather than once per call.
    unet_timesteps = timesteps if timesteps.device == latents.device else timesteps.to(latents.device)
    for call, t in enumerate(timesteps):
        # 1. conditioning of this model call, per row (and per AND part)
        cond_ctx = cond_table[part_index[:, call]]
        uncond_ctx = uncond_table[uncond_index[:, call]]
        # 2. one UNet evaluation for the whole batch (cond and uncond together when shapes allow)
        x = scheduler.scale_model_input(latents, t)
        eps_uncond, eps_cond = _predict_noise(unet, x, x[part_rows], unet_timesteps[call], uncond_ctx, cond_ctx)
        # 3. classifier-free guidance with each row's own scale; AND parts add their weighted deltas
        if part_weights is None:
            guidance = eps_cond - eps_uncond
        else:
            delta = (eps_cond - eps_uncond[part_rows]) * part_weights
            guidance = torch.zeros_like(eps_uncond)
            for positions, rows in part_slots:
                guidance.index_add_(0, rows, delta[positions])
        noise_pred = eps_uncond + (scales * guidance).to(eps_uncond.dtype)
        # 4. sampler step; stochastic samplers draw from each row's generator
        latents = scheduler.step(noise_pred, t, latents, return_dict=False, **step_kwargs)[0]
    return latents


def _nonfinite_mask(tensor):
    """Per row: True where the row holds a NaN or inf (a device tensor: reading it waits for the device)."""
    import torch

    return ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)


def _nonfinite_rows(tensor) -> list[bool]:
    return _nonfinite_mask(tensor).tolist()


def _decode(vae, latents):
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


def decode_latents(vae, latents, decode=None) -> DecodedBatch:
    """One VAE decode for the batch; images with NaN/inf are found per image.

    NaN/inf in the latents means the UNet diverged: the image is reported failed. NaN/inf only after the
    decode is the classic fp16 VAE overflow (A1111's black images): those images are decoded again with
    the VAE upcast to fp32, and reported failed only if that also fails. `decode` (default
    ``vae.decode``) may be the model's ``CompiledDecode``; the fp32 retry always runs the plain VAE.

    The decode is the batch's memory peak: when it runs out of memory, the (uncompiled) VAE decodes the
    batch in two halves instead, so the denoised latents are not thrown away; if a half does not fit
    either, the error goes to ``generate``, which makes the batch again at half its size.

    The images are turned into 8-bit pixels on the device, so only ``uint8`` crosses to the host (a
    quarter of the fp32 bytes); the rounding is diffusers' ``numpy_to_pil``'s.
    """
    import torch

    from expressiongrid.engine.generation import is_out_of_memory

    # Both checks are read in one go after the decode is queued: reading the latents' check first would
    # make the host wait for the whole denoising loop before it could queue the decode.
    latents_mask = _nonfinite_mask(latents)
    try:
        if decode is None:
            decoded = _decode(vae, latents).float()
        else:
            decoded = decode(latents / vae.config.scaling_factor).float()
    except Exception as exc:
        if not is_out_of_memory(exc) or latents.shape[0] == 1:
            raise
        decoded = None
    if decoded is None:  # after the except block: its traceback held the failed decode's activations
        if latents.device.type == "cuda":
            torch.cuda.empty_cache()
        half = (latents.shape[0] + 1) // 2
        decoded = torch.cat([_decode(vae, part).float() for part in latents.split(half)])
    bad_latents, bad_pixels = torch.stack([latents_mask, _nonfinite_mask(decoded)]).tolist()
    errors: list[str | None] = [None] * latents.shape[0]
    retried = [False] * latents.shape[0]
    for i, bad in enumerate(bad_latents):
        if bad:
            errors[i] = ("NaN/inf in the latents after denoising (the UNet diverged); "
                         "try fp32 or bf16, or another sampler or CFG scale")
    redo = [i for i, bad in enumerate(bad_pixels) if bad and not bad_latents[i]]
    if redo:
        vae_dtype = next(vae.parameters()).dtype
        try:
            if vae_dtype != torch.float32:
                _cast_module(vae, torch.float32)
            again = _decode(vae, latents[redo].float()).float()
        finally:
            if vae_dtype != torch.float32:
                _cast_module(vae, vae_dtype)
        still_bad = _nonfinite_rows(again)
        for j, i in enumerate(redo):
            retried[i] = True
            if still_bad[j]:
                errors[i] = "NaN/inf in the decoded image, also when decoded again with the VAE in fp32"
            else:
                decoded[i] = again[j]
    return DecodedBatch(pixels=to_uint8(decoded), errors=errors, nan_retried=retried)


def _cast_module(module, dtype) -> None:
    """``module.to(dtype)`` with ordinary (not inference-mode) tensors, also when called under inference mode.

    Parameters recast under ``torch.inference_mode()`` become inference tensors; dynamo guards on that, so
    the compiled VAE decode would compile again after the first fp32 retry (a minute on a GPU).
    """
    import torch

    with torch.inference_mode(False):
        module.to(dtype)


def to_uint8(decoded):
    """VAE output ``[B, 3, H, W]`` in [-1, 1] to host ``uint8 [B, H, W, 3]`` (NaN/inf become 0)."""
    import torch

    pixels = (torch.nan_to_num(decoded, nan=-1.0, posinf=-1.0, neginf=-1.0) / 2 + 0.5).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()


def to_pil(pixels) -> list:
    """Host ``uint8 [B, H, W, 3]`` (``decode_latents``' pixels) to PIL RGB images."""
    from PIL import Image

    return [Image.fromarray(a) for a in pixels.numpy()]
