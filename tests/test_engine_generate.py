"""generate(): the real prompt encoder end to end, the switch step, batching, NaN handling and OOM fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expressiongrid.engine import ImageRequest, ModelSpec, batch_size_for, generate, load_model
from expressiongrid.engine.generation import auto_batch_size, bytes_per_image
from expressiongrid.errors import SamplerError, UsageError

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SEED_PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: {expr}: 0.2], RAW photo, 1girl"


@pytest.fixture(scope="module")
def model():
    return load_model(ModelSpec("tiny"))


@pytest.fixture(autouse=True)
def _forget_batch_limits(model):
    """A test that runs out of memory on purpose leaves the module's model a batch limit: not for the next."""
    yield
    model.batch_limits.clear()


def request(expr="neutral face expression", seed=1, **kw):
    base = dict(prompt=SEED_PROMPT.format(expr=expr), negative_prompt="blurry, lowres", seed=seed, steps=5,
                cfg_scale=7.0, width=64, height=64, sampler="Euler a")
    base.update(kw)
    return ImageRequest(**base)


class UnetRecorder:
    """Records (batch size, encoder_hidden_states) of every UNet call; optionally raises or corrupts."""

    def __init__(self, unet, before=None, after=None):
        self.calls = []
        self.before, self.after = before, after
        self.handles = [unet.register_forward_pre_hook(self._pre, with_kwargs=True),
                        unet.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, _m, args, kwargs):
        ctx = kwargs["encoder_hidden_states"]
        self.calls.append(ctx.detach().clone())
        if self.before:
            self.before(args[0], ctx)

    def _post(self, _m, args, kwargs, output):
        if self.after:
            return self.after(args[0], kwargs["encoder_hidden_states"], output)
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("sampler,steps,switch_call", [("Euler a", 10, 3), ("Heun", 10, 5)])
def test_switch_step_follows_a1111_rule_with_real_encoder(model, sampler, steps, switch_call):
    """[a:b:0.2] at 10 steps: A1111's end step is int(0.2*10)=2, so calls 0-2 use a and call 3 on b.
    Heun evaluates the model twice per step; the schedule is built on 20 calls: end 4, switch at call 5."""
    from expressiongrid.prompts import get_schedule, schedule_index_for_call, total_model_calls
    from expressiongrid.prompts.conditioning import PromptEncoder

    reqs = [request("smiling", seed=3, steps=steps, sampler=sampler),
            request("angry", seed=4, steps=steps, sampler=sampler, prompt="woman [neutral:angry:6] face")]
    with UnetRecorder(model.pipe.unet) as rec:
        results = generate(model, reqs, batch_size=2)
    assert all(r.ok for r in results)

    num_calls = total_model_calls(steps, sampler)
    encoder = PromptEncoder(model.pipe.tokenizer, model.pipe.text_encoder)
    for row, req in enumerate(reqs):
        schedule = get_schedule(req.prompt, num_calls)
        texts = [schedule[schedule_index_for_call(schedule, call)][1] for call in range(len(rec.calls))]
        first_b = next(i for i, t in enumerate(texts) if t != texts[0])
        if row == 0:
            assert first_b == switch_call
            assert texts[0] == "closeup of woman facing viewer, hair, neck, eyes, lips, RAW photo, 1girl"
            # A1111 keeps the space after the ":" of the prompt-editing bracket
            assert texts[-1] == "closeup of woman facing viewer,  smiling, RAW photo, 1girl"
        else:
            assert first_b == 7  # integer step 6: calls 0-6 use "neutral"
        expected = {t: encoder.encode([t])[0] for t in set(texts)}
        for call, ctx in enumerate(rec.calls):
            assert ctx.shape[0] == 4  # one UNet call per model evaluation: [uncond x2; cond x2]
            assert torch.equal(ctx[2 + row], expected[texts[call]]), (row, call)


def test_batch_equals_alone_and_repeats_exactly(model):
    reqs = [request("smiling", seed=10), request("angry", seed=11, cfg_scale=4.0), request("sad", seed=12)]
    batch = generate(model, reqs, batch_size=3)
    alone = generate(model, [reqs[1]], batch_size=1)
    again = generate(model, [reqs[1]], batch_size=1)
    a, b = np.asarray(batch[1].image, dtype=int), np.asarray(alone[0].image, dtype=int)
    assert np.abs(a - b).max() <= 1  # 8-bit pixels: batched kernels differ by ~1e-6 before rounding
    assert np.asarray(again[0].image).tobytes() == np.asarray(alone[0].image).tobytes()
    assert [r.seed for r in batch] == [10, 11, 12] and all(r.ok and not r.nan_retried for r in batch)
    assert batch[0].image.size == (64, 64)
    assert np.abs(np.asarray(batch[0].image, dtype=int) - a).max() > 10  # rows are different images


def test_one_unet_call_per_step_per_group_and_order_kept(model):
    reqs = [request(seed=1), request(seed=2, width=72), request(seed=3), request(seed=4, width=72)]
    done = []
    with UnetRecorder(model.pipe.unet) as rec:
        results = generate(model, reqs, batch_size=8, progress=done.append)
    assert [c.shape[0] for c in rec.calls] == [4] * 5 + [4] * 5  # two groups (sizes), 5 steps each
    assert [r.image.size for r in results] == [(64, 64), (72, 64), (64, 64), (72, 64)]
    assert [r.seed for r in results] == [1, 2, 3, 4]
    assert done == [2, 4]


def test_lora_tags_are_stripped_and_and_parts_combined(model):
    plain = generate(model, [request("smiling", seed=5)], batch_size=1)[0]
    tagged = generate(model, [request("smiling <lora:someone:0.8>", seed=5)], batch_size=1)[0]
    assert np.asarray(plain.image).tobytes() != b"" and tagged.ok
    # "<lora:..>" leaves a double space behind, which CLIP tokenizes the same way
    assert np.abs(np.asarray(plain.image, dtype=int) - np.asarray(tagged.image, dtype=int)).max() <= 1
    with UnetRecorder(model.pipe.unet) as rec:
        both = generate(model, [request(seed=5, prompt="woman smiling AND man angry:0.5")], batch_size=1)[0]
    assert both.ok and rec.calls[0].shape[0] == 3  # uncond + two AND parts in one UNet call


def test_nan_in_fp16_style_vae_decode_is_retried_in_fp32():
    model = load_model(ModelSpec("tiny", dtype="bf16"))

    def overflow_in_low_precision(_m, args, output):
        if args[0].dtype != torch.float32:  # emulate the fp16 VAE overflow that makes A1111's black images
            output = output.clone()
            output[1] = float("inf")
            return output
        return None

    handle = model.pipe.vae.decoder.register_forward_hook(overflow_in_low_precision)
    try:
        results = generate(model, [request(seed=1), request(seed=2), request(seed=3)], batch_size=3)
    finally:
        handle.remove()
    assert [r.ok for r in results] == [True, True, True]
    assert [r.nan_retried for r in results] == [False, True, False]
    assert model.pipe.vae.dtype == torch.bfloat16  # the VAE is back in its dtype after the retry


def test_nan_that_survives_fp32_is_reported_per_image(model):
    def always_inf(_m, args, output):
        output = output.clone()
        output[0] = float("nan")
        return output

    handle = model.pipe.vae.decoder.register_forward_hook(always_inf)
    try:
        results = generate(model, [request(seed=1), request(seed=2)], batch_size=2)
    finally:
        handle.remove()
    assert not results[0].ok and results[0].image is None and "NaN/inf" in results[0].error
    assert results[0].nan_retried
    assert results[1].ok and results[1].image is not None


def test_nan_latents_from_the_unet_fail_only_that_image(model):
    def diverge(x, ctx, output):
        out = output[0].clone()
        out[0] = float("nan")  # uncond row of the first image
        return (out,)

    with UnetRecorder(model.pipe.unet, after=diverge):
        results = generate(model, [request(seed=1), request(seed=2)], batch_size=2)
    assert not results[0].ok and "latents" in results[0].error and results[0].image is None
    assert results[1].ok


def test_out_of_memory_halves_the_batch(model):
    sizes = []

    def limited_memory(x, ctx):
        if x.shape[0] > 4:  # more than 2 images (cond + uncond each) does not "fit"
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(x.shape[0] // 2)

    reqs = [request(seed=s) for s in range(5)]
    done = []
    with UnetRecorder(model.pipe.unet, before=limited_memory):
        results = generate(model, reqs, batch_size=5, progress=done.append)
    assert all(r.ok for r in results) and [r.seed for r in results] == list(range(5))
    assert set(sizes) <= {1, 2} and done[-1] == 5
    reference = generate(model, reqs[:2], batch_size=2)
    assert np.asarray(results[0].image).tobytes() == np.asarray(reference[0].image).tobytes()


def test_a_batch_size_that_ran_out_of_memory_is_not_tried_again(model):
    """The next call (the next batch of a column, the next column) starts at the size that fitted."""
    attempts = []

    def limited_memory(x, ctx):
        attempts.append(x.shape[0] // 2)
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    reqs = [request(seed=s) for s in range(4)]
    with UnetRecorder(model.pipe.unet, before=limited_memory):
        assert all(r.ok for r in generate(model, reqs, batch_size=4))
        assert attempts[0] == 4 and max(attempts[1:]) == 2
        attempts.clear()
        assert all(r.ok for r in generate(model, reqs, batch_size=4))
    assert max(attempts) == 2  # no second out-of-memory
    other = request(seed=1)
    assert batch_size_for(model, other.width, other.height, 16) == 2
    assert batch_size_for(model, other.width * 2, other.height, 16) == 16  # other sizes are not limited


def test_out_of_memory_at_batch_one_fails_only_that_request(model):
    from expressiongrid.prompts.conditioning import PromptEncoder

    poison = request(seed=9, prompt="woman screaming")
    encoder = PromptEncoder(model.pipe.tokenizer, model.pipe.text_encoder)
    poison_ctx = encoder.encode([poison.prompt])[0]

    def oom_with_poison(x, ctx):
        if any(torch.equal(c, poison_ctx) for c in ctx):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    reqs = [request("smiling", seed=1), poison, request("sad", seed=2)]
    done = []
    with UnetRecorder(model.pipe.unet, before=oom_with_poison):
        results = generate(model, reqs, batch_size=3, progress=done.append)
    assert [r.ok for r in results] == [True, False, True]
    assert "out of memory at batch size 1" in results[1].error and results[1].image is None
    assert done[-1] == 3


def test_auto_batch_size_from_free_memory():
    cuda = torch.device("cuda")
    per = bytes_per_image(512, 512, torch.float16)
    assert auto_batch_size(cuda, 512, 512, torch.float16, free_bytes=int(per * 3 / 0.8) + 1) == 3
    assert auto_batch_size(cuda, 512, 512, torch.float16, free_bytes=80 << 30) == 16
    assert auto_batch_size(cuda, 512, 512, torch.float16, free_bytes=1 << 20) == 1
    assert auto_batch_size(torch.device("cpu"), 64, 64, torch.float32, free_bytes=64 << 30) == 8
    # twice the pixels or twice the bytes per element: about half the batch
    assert auto_batch_size(cuda, 512, 1024, torch.float16, free_bytes=20 << 30) == \
        auto_batch_size(cuda, 512, 512, torch.float32, free_bytes=20 << 30)


def test_auto_batch_size_is_used_when_none_given(model, monkeypatch):
    import expressiongrid.engine.generation as gen

    monkeypatch.setattr(gen, "auto_batch_size", lambda *a, **k: 2)
    with UnetRecorder(model.pipe.unet) as rec:
        generate(model, [request(seed=s) for s in range(3)])
    assert sorted({c.shape[0] for c in rec.calls}) == [2, 4]


def test_bad_requests_fail_before_any_model_work(model):
    with UnetRecorder(model.pipe.unet) as rec:
        with pytest.raises(SamplerError, match="Euler a"):
            generate(model, [request(seed=1), request(seed=2, sampler="Euler b")])
        with pytest.raises(UsageError, match="multiples of 8"):
            generate(model, [request(seed=1, width=65)])
        with pytest.raises(UsageError, match="noise source"):
            generate(model, [request(seed=1, noise_source="nv")])
    assert rec.calls == []


def test_clip_skip_reaches_the_prompt_encoder():
    skip1 = load_model(ModelSpec("tiny"))
    skip2 = load_model(ModelSpec("tiny", clip_skip=2))
    req = request("smiling", seed=3)
    with UnetRecorder(skip2.pipe.unet) as rec:
        a = generate(skip2, [req], batch_size=1)[0]
    b = generate(skip1, [req], batch_size=1)[0]
    from expressiongrid.prompts.conditioning import PromptEncoder

    expected = PromptEncoder(skip2.pipe.tokenizer, skip2.pipe.text_encoder, clip_skip=2).encode(
        ["closeup of woman facing viewer, hair, neck, eyes, lips, RAW photo, 1girl"])[0]
    assert torch.equal(rec.calls[0][1], expected)
    assert np.asarray(a.image).tobytes() != np.asarray(b.image).tobytes()


def test_out_of_memory_is_recognised_in_its_forms():
    from expressiongrid.engine.generation import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_tiny_model_by_name_makes_a_64px_image(model):
    result = generate(model, [request(seed=2, steps=20)], batch_size=1)[0]
    assert result.ok and result.image.size == (64, 64)


def test_free_cuda_memory_counts_what_torch_keeps_cached(monkeypatch):
    """After a batch torch's allocator keeps the freed blocks; the driver counts them as used. Ignoring
    them would shrink every later column's batch (and with compiled code, pad it up to the first size)."""
    from expressiongrid.engine.generation import free_memory

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 24 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 12 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 << 30)
    assert free_memory(cuda) == (2 << 30) + (8 << 30)


def test_out_of_memory_empties_the_cache_after_the_failed_batch_is_released(model, monkeypatch):
    """torch.cuda.empty_cache can only return blocks nobody holds: it must run after the exception (whose
    traceback keeps the failed batch's tensors alive) is gone."""
    import weakref

    import expressiongrid.engine.generation as gen

    failed_inputs, released_at_empty = [], []

    def limited_memory(x, ctx):
        if x.shape[0] > 2:
            failed_inputs.append(weakref.ref(x))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gen, "_empty_cache", lambda device: released_at_empty.append(
        all(ref() is None for ref in failed_inputs)))
    with UnetRecorder(model.pipe.unet, before=limited_memory):
        results = generate(model, [request(seed=s) for s in range(2)], batch_size=2)
    assert all(r.ok for r in results)
    assert released_at_empty == [True]


def test_a_decode_that_runs_out_of_memory_keeps_the_denoised_batch(model):
    """The VAE decode is a batch's memory peak: when it does not fit, the batch is decoded in halves, not
    denoised again at half its size."""
    unet_calls, decode_batches = [], []

    def no_room_to_decode_three(_m, args, output):
        decode_batches.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB")

    handle = model.pipe.vae.decoder.register_forward_hook(no_room_to_decode_three)
    try:
        with UnetRecorder(model.pipe.unet) as rec:
            results = generate(model, [request(seed=s, steps=3) for s in range(3)], batch_size=3)
        unet_calls = [c.shape[0] for c in rec.calls]
    finally:
        handle.remove()
    assert all(r.ok for r in results)
    assert unet_calls == [6, 6, 6] and decode_batches == [3, 2, 1]  # denoised once; decoded 3, then 2 + 1
    whole = generate(model, [request(seed=s, steps=3) for s in range(3)], batch_size=3)  # decoded at once
    for a, b in zip(results, whole):  # the same latents; the VAE at another batch size rounds differently
        assert np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max() <= 1
