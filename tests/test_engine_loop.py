"""The batched denoising loop: stock-pipeline equivalence, per-row prompt switching, seeds and batching."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from expressiongrid.engine.denoise import denoise_batch
from expressiongrid.engine.noise import initial_noise, make_generators
from expressiongrid.engine.schedulers import make_scheduler
from expressiongrid.samplers import SAMPLERS, get_sampler

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SIZE = 64
STEPS = 6


@dataclass
class Scheduled:
    table: torch.Tensor
    index: torch.Tensor
    texts: list


class StandInEncoder:
    """Encodes ``[from:to:when]`` (integer `when`) with A1111's call rule; plain CLIP, one 77-token chunk.

    Small enough to be obviously right, so the loop can be tested on its own terms.
    """

    def __init__(self, pipe, chunks: int = 1):
        self.pipe, self.chunks = pipe, chunks

    def schedule(self, prompt: str, num_calls: int) -> list[tuple[int, str]]:
        m = re.search(r"\[([^:\]]*):([^:\]]*):(\d+)\]", prompt)
        if not m:
            return [(num_calls, prompt)]
        when = int(m.group(3))
        before = prompt[: m.start()] + m.group(1) + prompt[m.end():]
        after = prompt[: m.start()] + m.group(2) + prompt[m.end():]
        return [(when, before), (num_calls, after)]

    def encode_schedules(self, prompts, num_calls):
        schedules = [self.schedule(p, num_calls) for p in prompts]
        texts = list(dict.fromkeys(t for s in schedules for _, t in s))
        tok = self.pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            z = self.pipe.text_encoder(tok.input_ids)[0]
        table = z.repeat(1, self.chunks, 1)  # a "long prompt": k chunks of 77
        index = torch.tensor([[texts.index(next(t for end, t in s if end >= i)) for i in range(num_calls)]
                              for s in schedules])
        return Scheduled(table, index, texts)


def run_rows(pipe, encoder, prompts, negatives, seeds, cfgs, sampler, steps=STEPS, unet=None):
    info = get_sampler(sampler)  # plain "DPM++ 2M" is A1111's Automatic schedule (Karras)
    unet = unet or pipe.unet
    dtype = unet.dtype
    num_calls = 2 * steps if info.second_order else steps
    cond = encoder.encode_schedules(prompts, num_calls)
    uncond = encoder.encode_schedules(negatives, num_calls)
    scheduler = make_scheduler(sampler, pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    gens = make_generators(seeds, "cpu", "cpu")
    latents = initial_noise(gens, (4, SIZE // 8, SIZE // 8), "cpu", dtype)
    with torch.inference_mode():
        return denoise_batch(unet, scheduler, latents, cond, uncond, cfgs, generators=gens, seeds=seeds)


def relative_difference(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def encoder(tiny_pipeline):
    return StandInEncoder(tiny_pipeline)


@pytest.fixture(scope="module")
def unet64(tiny_pipeline):
    """The tiny UNet in float64, for batch-vs-alone comparisons that fp32 rounding would blur.

    In fp32 the batched CPU kernels round differently from batch-1 ones (~1e-6 per UNet call), and the
    random, untrained tiny UNet is chaotic enough to grow that to ~1e-3 after a few DDIM steps. In fp64 the
    same comparison isolates what the engine controls (per-image generators, per-row conditioning and
    CFG, no leakage between rows) and must agree to 1e-9.
    """
    import copy

    return copy.deepcopy(tiny_pipeline.unet).double()


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "Heun", "DDIM", "UniPC", "LMS"])
def test_loop_reproduces_stock_pipeline_bit_for_bit(tiny_pipeline, encoder, sampler):
    from diffusers import StableDiffusionPipeline

    prompt, negative = "closeup of woman smiling", "blurry"
    cond = encoder.encode_schedules([prompt], STEPS)
    uncond = encoder.encode_schedules([negative], STEPS)
    ours = run_rows(tiny_pipeline, encoder, [prompt], [negative], [42], [7.0], sampler)
    stock = StableDiffusionPipeline(**{**tiny_pipeline.components, "scheduler": make_scheduler(sampler, tiny_pipeline.scheduler.config)})
    stock.set_progress_bar_config(disable=True)
    theirs = stock(prompt_embeds=cond.table[:1], negative_prompt_embeds=uncond.table[:1], num_inference_steps=STEPS,
                   guidance_scale=7.0, height=SIZE, width=SIZE, generator=[torch.Generator().manual_seed(42)],
                   output_type="latent").images
    assert torch.equal(ours, theirs)


def record_unet_contexts(unet):
    """Record the encoder_hidden_states of every UNet call; returns (records, hook handle)."""
    seen = []

    def hook(_module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    return seen, unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("sampler", ["Euler a", "Heun"])
def test_each_row_switches_prompt_at_its_own_call(tiny_pipeline, encoder, sampler):
    prompts = ["woman [neutral:smiling:1] face", "woman [neutral:angry:3] face", "woman sad face"]
    negatives = ["blurry", "[lowres:blurry:2]", "blurry"]
    info = SAMPLERS[sampler]
    num_calls = 2 * STEPS if info.second_order else STEPS
    cond = encoder.encode_schedules(prompts, num_calls)
    uncond = encoder.encode_schedules(negatives, num_calls)
    seen, handle = record_unet_contexts(tiny_pipeline.unet)
    try:
        run_rows(tiny_pipeline, encoder, prompts, negatives, [1, 2, 3], [7.0, 5.0, 3.0], sampler)
    finally:
        handle.remove()
    scheduler = make_scheduler(sampler, tiny_pipeline.scheduler.config)
    scheduler.set_timesteps(STEPS)
    assert len(seen) == len(scheduler.timesteps)  # one UNet call per model evaluation for all rows
    if info.second_order:
        assert len(seen) == 2 * STEPS - 1  # the last step of Heun is an Euler step: one evaluation
    expected_cond = [["woman neutral face"] * 2 + ["woman smiling face"] * (num_calls - 2),
                     ["woman neutral face"] * 4 + ["woman angry face"] * (num_calls - 4),
                     ["woman sad face"] * num_calls]
    expected_uncond = [["blurry"] * num_calls, ["lowres"] * 3 + ["blurry"] * (num_calls - 3), ["blurry"] * num_calls]
    for call, ctx in enumerate(seen):
        assert ctx.shape[0] == 6  # [uncond x3; cond x3] in one batch
        for row in range(3):
            assert torch.equal(ctx[row], uncond.table[uncond.texts.index(expected_uncond[row][call])]), (call, row)
            assert torch.equal(ctx[3 + row], cond.table[cond.texts.index(expected_cond[row][call])]), (call, row)


STOCHASTIC = [name for name, info in SAMPLERS.items() if info.stochastic and "Karras" not in name] + ["DPM++ SDE Karras"]


@pytest.mark.parametrize("sampler", sorted(set(STOCHASTIC + ["DPM++ 2M", "UniPC", "DDIM", "LMS", "DPM2"])))
def test_image_alone_equals_image_in_batch(tiny_pipeline, encoder, unet64, sampler):
    """Tolerance: 1e-9 of the latents' largest magnitude, in fp64 (see `unet64`); 1e-7 with the Beta schedule
    and Brownian-tree noise, whose closely spaced first sigmas fall within torchsde's interval tolerance
    (measured 1.1e-8)."""
    rows = (["woman smiling", "woman [neutral:angry:2] face", "man sad"], ["blurry", "", "lowres"],
            [10, 11, 12], [7.0, 4.0, 9.0])
    batch = run_rows(tiny_pipeline, encoder, *rows, sampler, unet=unet64)
    alone = run_rows(tiny_pipeline, encoder, ["woman [neutral:angry:2] face"], [""], [11], [4.0], sampler, unet=unet64)
    tolerance = 1e-7 if sampler.endswith("SDE Beta") else 1e-9
    assert relative_difference(batch[1], alone[0]) < tolerance
    # and the rows really are different images (seeds/prompts are not ignored)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE Karras", "DPM++ SDE Karras"])
def test_repeated_runs_are_bit_identical_in_fp32(tiny_pipeline, encoder, sampler):
    rows = (["woman smiling", "woman [neutral:angry:2] face"], ["blurry", ""], [10, 11], [7.0, 4.0])
    assert torch.equal(run_rows(tiny_pipeline, encoder, *rows, sampler), run_rows(tiny_pipeline, encoder, *rows, sampler))


def test_ancestral_noise_comes_from_each_images_generator(tiny_pipeline, encoder, unet64):
    """Same seed for two rows with the same prompt: identical images only if later noise is per image."""
    out = run_rows(tiny_pipeline, encoder, ["woman smiling"] * 2, ["blurry"] * 2, [5, 5], [7.0, 7.0], "Euler a",
                   unet=unet64)
    assert relative_difference(out[0], out[1]) < 1e-9
    out = run_rows(tiny_pipeline, encoder, ["woman smiling"] * 2, ["blurry"] * 2, [5, 6], [7.0, 7.0], "Euler a",
                   unet=unet64)
    assert not torch.allclose(out[0], out[1], atol=1e-2)


def test_cfg_scale_is_per_row(tiny_pipeline, encoder, unet64):
    out = run_rows(tiny_pipeline, encoder, ["woman smiling"] * 2, ["blurry"] * 2, [5, 5], [7.0, 2.0], "Euler",
                   unet=unet64)
    alone = run_rows(tiny_pipeline, encoder, ["woman smiling"], ["blurry"], [5], [2.0], "Euler", unet=unet64)
    assert relative_difference(out[1], alone[0]) < 1e-9
    assert not torch.allclose(out[0], out[1], atol=1e-2)


def test_cond_and_uncond_of_different_lengths_run_as_two_calls(tiny_pipeline):
    """A 154-token prompt with a 77-token negative: two UNet calls per step instead of padding."""
    long_encoder, short_encoder = StandInEncoder(tiny_pipeline, chunks=2), StandInEncoder(tiny_pipeline, chunks=1)
    cond = long_encoder.encode_schedules(["woman smiling", "man sad"], STEPS)
    uncond = short_encoder.encode_schedules(["blurry", "lowres"], STEPS)
    scheduler = make_scheduler("Euler", tiny_pipeline.scheduler.config)
    scheduler.set_timesteps(STEPS)
    gens = make_generators([1, 2], "cpu", "cpu")
    latents = initial_noise(gens, (4, 8, 8), "cpu", torch.float32)
    seen, handle = record_unet_contexts(tiny_pipeline.unet)
    try:
        with torch.inference_mode():
            out = denoise_batch(tiny_pipeline.unet, scheduler, latents, cond, uncond, [7.0, 7.0], generators=gens)
    finally:
        handle.remove()
    assert [tuple(c.shape[:2]) for c in seen[:2]] == [(2, 77), (2, 154)]
    assert len(seen) == 2 * STEPS and torch.isfinite(out).all()


def test_schedule_too_short_for_sampler_is_an_error(tiny_pipeline, encoder):
    from expressiongrid.errors import GenerationError

    cond = encoder.encode_schedules(["woman"], STEPS)  # Heun needs 2 x steps
    scheduler = make_scheduler("Heun", tiny_pipeline.scheduler.config)
    scheduler.set_timesteps(STEPS)
    latents = torch.zeros(1, 4, 8, 8)
    with pytest.raises(GenerationError, match="total_model_calls"):
        denoise_batch(tiny_pipeline.unet, scheduler, latents, cond, cond, [7.0])


# -- the guidance combine, on its own (stand-in UNet and sampler) -------------------------------------------


class RecordingSampler:
    """One model call; records the noise prediction the loop hands to the sampler."""

    def __init__(self):
        self.timesteps = torch.tensor([1.0])
        self.init_noise_sigma = 1.0
        self.seen = []

    def scale_model_input(self, sample, t):
        return sample

    def step(self, noise_pred, t, sample, return_dict=False):
        self.seen.append(noise_pred)
        return (sample,)


def context_unet(sample, t, encoder_hidden_states, return_dict=False):
    """A noise prediction that depends on each row's conditioning and latents, value by value."""
    scale = 1 + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return (sample * scale + encoder_hidden_states[:, :1, :1].view(-1, 1, 1, 1),)


def stand_in_conditioning(dtype, texts: int, rows: int, parts: int = 1):
    g = torch.Generator().manual_seed(3)
    table = torch.randn((texts, 77, 8), generator=g).to(dtype)
    index = torch.arange(rows * parts).remainder(texts).view(rows, parts, 1)
    return table, index


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cfg_scale_multiplies_as_diffusers_does_in_half_precision(dtype):
    """diffusers computes uncond + cfg * (cond - uncond) with cfg a Python float; in fp16/bf16 the scale must
    not be rounded to the model dtype first (bf16 makes 6.3 into 6.3125)."""
    table, index = stand_in_conditioning(dtype, texts=4, rows=2)
    cond = Scheduled(table, index[:, 0], [])
    uncond = Scheduled(table, index[:, 0].flip(0) + 2, [])
    latents = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(4)).to(dtype)
    sampler = RecordingSampler()
    with torch.inference_mode():
        denoise_batch(context_unet, sampler, latents, cond, uncond, [6.3, 4.35])
        eps_u = context_unet(latents, None, table[uncond.index[:, 0]])[0]
        eps_c = context_unet(latents, None, table[cond.index[:, 0]])[0]
        want = torch.cat([eps_u[i:i + 1] + cfg * (eps_c[i:i + 1] - eps_u[i:i + 1]) for i, cfg in enumerate((6.3, 4.35))])
    assert sampler.seen[0].dtype == dtype and torch.equal(sampler.seen[0], want)


def test_and_parts_are_summed_in_order_whatever_order_index_add_applies_them(monkeypatch):
    """On CUDA index_add_ adds with atomics, in no fixed order; with three AND parts in a row the sum must
    still be (part 0 + part 1) + part 2, the same bits every run and on every device."""
    dtype = torch.float16
    table, index = stand_in_conditioning(dtype, texts=6, rows=2, parts=3)
    weights = torch.tensor([[1.0, 0.7, 0.45], [0.9, 1.3, 0.0]]).to(dtype)  # row 1: two parts and padding
    cond = Scheduled(table, index[:, 0], [])
    cond.part_index, cond.part_weights = index, weights
    uncond = Scheduled(table, torch.full((2, 1), 5), [])
    latents = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(5)).to(dtype)

    def run():
        sampler = RecordingSampler()
        with torch.inference_mode():
            denoise_batch(context_unet, sampler, latents, cond, uncond, [7.0, 7.0])
        return sampler.seen[0]

    in_order = run()
    original = torch.Tensor.index_add_

    def reversed_order(self, dim, idx, source, alpha=1):  # what an atomic add may do
        return original(self, dim, idx.flip(0), source.flip(0), alpha=alpha)

    monkeypatch.setattr(torch.Tensor, "index_add_", reversed_order)
    assert torch.equal(run(), in_order)
    with torch.inference_mode():
        eps_u = context_unet(latents, None, table[uncond.index[:, 0]])[0]
        for row in range(2):
            total = torch.zeros_like(eps_u[row])
            for k in range(3):
                if weights[row, k] != 0:
                    eps_k = context_unet(latents[row:row + 1], None, table[index[row, k, 0]][None])[0][0]
                    total = total + (eps_k - eps_u[row]) * weights[row, k]
            assert torch.equal(in_order[row], eps_u[row] + (7.0 * total.float()).to(dtype))
