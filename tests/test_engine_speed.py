"""The fast path: default dtype, torch.compile without recompiles, prepared sampler noise, uint8 decode."""

from __future__ import annotations

import types

import pytest
import torch

from expressiongrid.characters import CharacterActivator, load_character
from expressiongrid.characters import demo
from expressiongrid.engine import ImageRequest, ModelSpec, generate, load_model, make_scheduler
from expressiongrid.engine.compiled import BatchBuckets, should_compile
from expressiongrid.engine.denoise import decode_latents, denoise_batch
from expressiongrid.engine.generation import encode_batch, prompt_encoder
from expressiongrid.engine.loading import enable_compile
from expressiongrid.engine.noise import PreparedNoise, initial_noise, make_generators
from expressiongrid.engine.precision import allow_tf32, default_dtype, resolve_dtype
from expressiongrid.errors import UsageError
from expressiongrid.samplers import SAMPLERS

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: {expr}: 0.2], RAW photo, {char}"
EXPRESSIONS = ("neutral face expression", "angry", "crying")


def requests(char="1girl", n=3, steps=3):
    return [ImageRequest(PROMPT.format(expr=e, char=char), "blurry", seed=10 + i, steps=steps, width=64, height=64,
                         sampler="Euler a") for i, e in enumerate((EXPRESSIONS * 3)[:n])]


# -- dtype --------------------------------------------------------------------------------------------


def test_auto_dtype_is_fp32_on_cpu_and_the_loaded_model_says_so():
    assert default_dtype(torch.device("cpu")) == "fp32"
    model = load_model(ModelSpec("tiny"))
    assert model.dtype == torch.float32 and model.dtype_name == "fp32"
    assert not model.compiled and "fp32" in model.describe() and "not compiled" in model.describe()


@pytest.mark.parametrize("capability, expected", [((9, 0), "fp16"), ((8, 6), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")])
def test_auto_dtype_on_cuda_is_fp16_where_tensor_cores_run_it(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert default_dtype(torch.device("cuda")) == expected
    assert resolve_dtype("bf16", torch.device("cuda")) == "bf16"  # asked for: kept


def test_unknown_dtype_is_a_usage_error():
    with pytest.raises(UsageError, match="auto, fp32, fp16, bf16"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_tf32_only_for_fp32_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    assert not allow_tf32(torch.device("cpu"), "fp32") and not allow_tf32(torch.device("cuda"), "fp16")
    assert calls == []
    assert allow_tf32(torch.device("cuda"), "fp32") and calls == ["high"]


def test_auto_compiles_on_cuda_only_for_runs_long_enough_to_earn_the_compile_time(monkeypatch):
    import importlib.util

    from expressiongrid.engine.compiled import COMPILE_MIN_IMAGES

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # as if triton were installed
    cuda = torch.device("cuda")
    assert should_compile("auto", cuda, images=COMPILE_MIN_IMAGES) and should_compile("auto", cuda)
    assert not should_compile("auto", cuda, images=108)  # one 9 x 12 grid: not worth a minute of compiling
    assert should_compile("on", cuda, images=1)


def test_compile_is_automatic_on_cuda_only():
    assert not should_compile("auto", torch.device("cpu"))
    assert should_compile("on", torch.device("cpu")) and not should_compile("off", torch.device("cuda"))
    with pytest.raises(UsageError, match="auto, on, off"):
        should_compile("yes", torch.device("cpu"))


def test_batches_pad_to_a_compiled_size_and_only_a_larger_batch_adds_one():
    b = BatchBuckets()
    assert [b.size_for(n, ("sig",)) for n in (18, 18, 4, 2)] == [18, 18, 18, 18]
    assert b.size_for(20, ("sig",)) == 20 and b.size_for(19, ("sig",)) == 20 and b.size_for(6, ("sig",)) == 18
    assert b.size_for(4, ("other",)) == 4  # another per-image shape is another compilation


# -- torch.compile: no recompilation across columns ---------------------------------------------------


@pytest.fixture(scope="module")
def characters(tmp_path_factory):
    d = tmp_path_factory.mktemp("chars")
    pipe = load_model(ModelSpec("tiny")).pipe
    lora_toml, emb_toml = demo.make_demo_characters(pipe, d)
    other = demo.save_kohya_lora(pipe, d / "other.safetensors", rank=4, alpha=2.0, seed=3, strength=1.5)
    (d / "other.toml").write_text(f'label = "other"\ntext = "1girl"\n\n[[lora]]\nfile = "{other.name}"\n')
    return [load_character(p) for p in (lora_toml, d / "other.toml", emb_toml)]


def test_lora_and_embedding_columns_never_recompile_the_unet(characters):
    """One compilation for the reference column; LoRA swaps, an embedding column and a short tail batch
    run under dynamo's fail-on-recompile stance. A longer prompt (new conditioning shape) does recompile:
    the guard is live."""
    model = enable_compile(load_model(ModelSpec("tiny")), backend="eager")
    activator = CharacterActivator(model)
    activator.prepare(characters)
    torch._dynamo.reset()
    reference = generate(model, requests(steps=2), batch_size=3)
    assert all(r.ok for r in reference)
    with torch.compiler.set_stance("fail_on_recompile"):
        for ch in characters:
            with activator.activate(ch) as active:
                results = generate(model, requests(ch.text, steps=2), batch_size=3, embeddings=active.embeddings)
            assert all(r.ok for r in results)
        tail = generate(model, requests(n=2, steps=2), batch_size=2)  # padded to the compiled batch of 3
        assert all(r.ok for r in tail)
        long_prompt = ", ".join(["a very detailed photo of a smiling woman"] * 12)
        with pytest.raises(Exception, match="(?i)recompil"):
            generate(model, [ImageRequest(long_prompt, "", seed=1, steps=2, width=64, height=64)], batch_size=1)
    # the swaps changed the images, so the compiled UNet saw the written weights
    assert reference[0].image.tobytes() != results[0].image.tobytes()


def test_compiled_model_makes_the_pixels_of_the_uncompiled_one():
    """The compiled path (dynamo graph capture, AOT autograd's decompositions, padded batches) gives the
    uncompiled model's 8-bit images: equal within 1 level. Inductor's generated kernels are compared the
    same way at SD1.5 size on the GPU by scripts/gpu_check.py (compiling them on a CPU takes minutes)."""
    import numpy as np

    torch._dynamo.reset()
    plain = load_model(ModelSpec("tiny"))
    compiled = enable_compile(load_model(ModelSpec("tiny")), backend="aot_eager")
    want = generate(plain, requests(steps=3), batch_size=3)
    got = generate(compiled, requests(steps=3), batch_size=3)
    tail = generate(compiled, requests(n=2, steps=3), batch_size=2)  # padded to the compiled batch of 3
    for a, b in zip(want + want[:2], got + tail):
        diff = np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
        assert diff.max() <= 1


# -- sampler noise prepared for the batch -------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return load_model(ModelSpec("tiny"))



@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2M SDE Karras"])
def test_prepared_noise_gives_bit_identical_latents(model, sampler, monkeypatch):
    reqs = [ImageRequest(PROMPT.format(expr=e, char="1girl"), "", seed=5 + i, steps=4, width=64, height=64,
                         sampler=sampler) for i, e in enumerate(EXPRESSIONS)]
    from expressiongrid.samplers import get_sampler
    from expressiongrid.prompts import total_model_calls

    info = get_sampler(sampler)
    with torch.inference_mode():
        cond, uncond = encode_batch(prompt_encoder(model, None), reqs, total_model_calls(4, info.name))

    served = []
    original_next = PreparedNoise.next
    monkeypatch.setattr(PreparedNoise, "next", lambda self, *a: served.append(1) or original_next(self, *a))

    def run(prepare):
        scheduler = make_scheduler(info.name, model.pipe.scheduler.config)
        scheduler.set_timesteps(4)
        gens = make_generators([r.seed for r in reqs], "cpu", model.device)
        latents = initial_noise(gens, (4, 8, 8), model.device, model.dtype)
        with torch.inference_mode():
            return denoise_batch(model.pipe.unet, scheduler, latents, cond, uncond, [7.0] * 3, generators=gens,
                                 seeds=[r.seed for r in reqs], prepare_noise=prepare)

    step_by_step = run(False)
    assert served == []
    prepared = run(True)
    assert served, "the sampler's noise did not come from the prepared batch"
    assert torch.equal(step_by_step, prepared)


def test_prepared_noise_drawn_in_parts_gives_the_same_latents(model, monkeypatch):
    """A long or large batch is prepared in parts (bounded pinned and GPU memory); the numbers stay those
    of drawing step by step."""
    import expressiongrid.engine.noise as noise

    reqs = requests(n=3, steps=4)
    with torch.inference_mode():
        cond, uncond = encode_batch(prompt_encoder(model, None), reqs, 4)
    monkeypatch.setattr(noise, "MAX_PREPARED_BYTES", 2 * 3 * 4 * 8 * 8 * 4)  # two steps of 3 fp32 images
    parts = []
    original = noise.to_device
    monkeypatch.setattr(noise, "to_device", lambda t, d: (parts.append(1) if t.dim() == 5 else None) or original(t, d))

    def run(prepare):
        scheduler = make_scheduler("Euler a", model.pipe.scheduler.config)
        scheduler.set_timesteps(4)
        gens = make_generators([r.seed for r in reqs], "cpu", model.device)
        latents = initial_noise(gens, (4, 8, 8), model.device, model.dtype)
        with torch.inference_mode():
            return denoise_batch(model.pipe.unet, scheduler, latents, cond, uncond, [7.0] * 3, generators=gens,
                                 prepare_noise=prepare)

    step_by_step = run(False)
    assert torch.equal(run(True), step_by_step) and len(parts) == 2


# -- decode -------------------------------------------------------------------------------------------


def test_decoded_images_cross_to_the_host_as_uint8_with_diffusers_rounding(model):
    import numpy as np

    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        decoded = decode_latents(model.pipe.vae, latents)
        image = model.pipe.vae.decode(latents / model.pipe.vae.config.scaling_factor).sample
    assert decoded.pixels.dtype == torch.uint8 and tuple(decoded.pixels.shape) == (2, 64, 64, 3)
    want = (((image / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    assert np.array_equal(decoded.pixels.numpy(), want)


# -- compiled code: inputs normalised, memory errors, many shapes ---------------------------------------


def test_samplers_with_int_and_float_timesteps_share_one_compiled_unet():
    """DPM++ 2M and DDIM give int64 timesteps, Euler a float32: a sampler axis must not compile the UNet once
    per timestep dtype (a minute each on a GPU), and the images must not change."""
    torch._dynamo.reset()
    plain = load_model(ModelSpec("tiny"))
    model = enable_compile(load_model(ModelSpec("tiny")), backend="eager")
    reqs = lambda sampler: [ImageRequest("a woman smiling", "blurry", seed=s, steps=2, width=64, height=64,  # noqa: E731
                                         sampler=sampler) for s in (1, 2)]
    assert all(r.ok for r in generate(model, reqs("Euler a"), batch_size=2))
    with torch.compiler.set_stance("fail_on_recompile"):
        got = generate(model, reqs("DPM++ 2M Karras"), batch_size=2) + generate(model, reqs("DDIM"), batch_size=2)
    want = generate(plain, reqs("DPM++ 2M Karras"), batch_size=2) + generate(plain, reqs("DDIM"), batch_size=2)
    assert [a.image.tobytes() for a in got] == [b.image.tobytes() for b in want]


def test_channels_last_latents_reach_the_compiled_unet_in_its_compiled_layout(model):
    """A channels-last UNet returns channels-last noise; latents in that layout must not compile again."""
    from expressiongrid.engine.compiled import CompiledUNet

    torch._dynamo.reset()
    unet = model.pipe.unet
    compiled = CompiledUNet(unet, backend="eager")
    with torch.inference_mode():  # as in the engine: inputs made under inference mode (dynamo guards on it)
        x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
        ctx = torch.randn((2, 77, unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(1))
        t = torch.tensor(500.0)
        first = compiled(x, t, encoder_hidden_states=ctx)[0]
        with torch.compiler.set_stance("fail_on_recompile"):
            again = compiled(x.contiguous(memory_format=torch.channels_last), t, encoder_hidden_states=ctx)[0]
    assert torch.equal(first, again)


def test_a_batch_size_that_ran_out_of_memory_is_not_padded_to_again():
    """generate halves a batch that runs out of memory; the compiled UNet must then run the smaller batch,
    not pad it back up to the size that did not fit (every retry would fail the same way)."""
    torch._dynamo.reset()
    model = enable_compile(load_model(ModelSpec("tiny")), backend="eager")
    compiled = model.unet_call
    real = compiled._compiled
    seen = []

    def fits_two_rows(sample, *args, **kwargs):  # a GPU with room for one image (cond + uncond) at a time
        seen.append(sample.shape[0])
        if sample.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(sample, *args, **kwargs)

    compiled._compiled = fits_two_rows
    results = generate(model, requests(n=2, steps=2), batch_size=2)
    assert all(r.ok for r in results), [r.error for r in results]
    assert seen[0] == 4 and set(seen[1:]) == {2}
    assert list(compiled.buckets.compiled_sizes().values()) == [[2]]


def test_many_compiled_shapes_do_not_hit_dynamos_recompile_limit(model):
    """fullgraph=True turns dynamo's full cache (8 shapes by default) into an error; a study over sizes,
    prompt lengths and batch sizes can need more."""
    from expressiongrid.engine.compiled import CompiledUNet

    torch._dynamo.reset()
    unet = model.pipe.unet
    compiled = CompiledUNet(unet, backend="eager")
    with torch.inference_mode():
        for n in range(1, 11):  # ten batch sizes, each larger than every one compiled before
            out = compiled(torch.zeros((n, 4, 8, 8)), torch.tensor(10.0),
                           encoder_hidden_states=torch.zeros((n, 77, unet.config.cross_attention_dim)))[0]
            assert out.shape[0] == n
    assert list(compiled.buckets.compiled_sizes().values()) == [list(range(1, 11))]


def test_fp32_decode_retry_leaves_the_compiled_decode_valid():
    """The fp16-overflow retry casts the VAE to fp32 and back inside inference mode; the weights must come
    back as ordinary tensors, or the compiled decode compiles again (dynamo guards on it)."""
    import math

    from expressiongrid.engine.compiled import CompiledDecode

    torch._dynamo.reset()
    vae = load_model(ModelSpec("tiny", dtype="bf16")).pipe.vae
    compiled = CompiledDecode(vae, backend="eager")

    def overflowing(z):  # the fp16 VAE overflow behind A1111's black images, in image 1
        out = compiled(z).clone()
        out[1] = math.inf
        return out

    with torch.inference_mode():
        latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        first = decode_latents(vae, latents, decode=compiled)
        retried = decode_latents(vae, latents, decode=overflowing)
        with torch.compiler.set_stance("fail_on_recompile"):
            again = decode_latents(vae, latents, decode=compiled)
    assert retried.nan_retried == [False, True] and retried.errors == [None, None]
    assert vae.dtype == torch.bfloat16 and not any(p.is_inference() for p in vae.parameters())
    assert torch.equal(first.pixels, again.pixels)


def test_decode_is_queued_before_the_host_reads_anything_back(model, monkeypatch):
    """On a GPU, reading a value back waits for all queued work: the latents' NaN check must not be read
    before the decode is queued, or the host idles through the whole denoising loop first."""
    events = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: events.append("read") or original(self))

    def decode(z):
        events.append("decode")
        return model.pipe.vae.decode(z, return_dict=False)[0]

    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        decoded = decode_latents(model.pipe.vae, latents, decode=decode)
    assert events[0] == "decode" and decoded.errors == [None, None]


# -- host syncs -------------------------------------------------------------------------------------------


# DPM++ SDE's Brownian trees (torchsde) seed a generator on the latents' device, which `meta` has not.
NO_META_GENERATOR = ("DPMSolverSDEScheduler",)


@pytest.mark.parametrize("sampler", [name for name, info in SAMPLERS.items()
                                     if info.scheduler_class not in NO_META_GENERATOR])
def test_the_denoising_loop_reads_nothing_back_from_the_device(model, sampler):
    """Every sampler's loop runs with nothing read back from the device (no host waits per step).

    Latents on the ``meta`` device have no values, so any read of a device value on the host is an error,
    where on a GPU it would wait for the queued work. Timesteps go on that device as the engine puts them
    (the schedulers keep their sigma tables on the host themselves); noise comes from CPU generators,
    prepared. Before, each batch's first step searched the device timesteps for its step index, and DDIM
    read ``alphas_cumprod[timestep]`` and ``prev_timestep >= 0`` back at every step."""
    from expressiongrid.engine.schedulers import HOST_TIMESTEP_SCHEDULERS, set_timesteps
    from expressiongrid.prompts import total_model_calls

    meta = torch.device("meta")
    scheduler = make_scheduler(sampler, model.pipe.scheduler.config)
    set_timesteps(scheduler, 4, "cpu")  # diffusers cannot build its sigma tables on `meta` ...
    if type(scheduler).__name__ not in HOST_TIMESTEP_SCHEDULERS:
        scheduler.timesteps = scheduler.timesteps.to(meta)  # ... so the device timesteps are moved there
    else:
        set_timesteps(scheduler, 4, meta)
        assert scheduler.timesteps.device.type == "cpu"
    calls = total_model_calls(4, SAMPLERS[sampler].name)
    seen = []

    def unet(x, t, encoder_hidden_states, return_dict=False):
        seen.append(t.device)
        return (torch.zeros_like(x),)

    rows, width = 2, model.pipe.text_encoder.config.hidden_size
    conditioning = types.SimpleNamespace(table=torch.zeros(1, 77, width, device=meta),
                                         index=torch.zeros(rows, calls, dtype=torch.long, device=meta))
    generators = make_generators([1, 2], "cpu", torch.device("cpu"))
    out = denoise_batch(unet, scheduler, torch.zeros(rows, 4, 8, 8, device=meta), conditioning, conditioning,
                        [7.0] * rows, generators=generators, seeds=[1, 2], prepare_noise=True)
    assert out.device == meta and seen == [meta] * len(scheduler.timesteps) and len(seen) <= calls
