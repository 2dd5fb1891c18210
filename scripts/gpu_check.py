"""The prepared GPU check: the engine's speed levers measured on random full-size SD1.5 in under 5 minutes.

Builds SD1.5 (UNet, VAE, CLIP-L) from the shipped configs with seeded random weights (no download) and
writes one JSON object to --out, rewritten after every section, so a run cut short still leaves what it
measured. Sections, most important first; each is skipped (and says so) once --budget seconds are used:

  env             device, versions, dtype
  unet            UNet calls/s and TFLOP/s at batch 2 and 18: eager, channels_last
  unet_compiled   the same at batch 18 compiled (channels_last + torch.compile): compile seconds, speed-up
  recompiles      LoRA swaps (in place) and an embedding column under fail_on_recompile: must be 0
  host_syncs      synchronising CUDA calls per step, 9 rows: Euler a with CPU noise (prepared and step by
                  step) and GPU noise, DPM++ 2M Karras, DDIM, DPM++ 2M SDE Karras; text-encoder ms per row
  vae_decode      one decode of 9 latents vs 9 decodes of 1 (eager), compiled decode, compiled vs eager pixels
  compiled_pixels 8-bit difference between the compiled and the eager engine on the same 9-row column
  end_to_end      9-row columns three ways (scripts/bench.py): engine, fair baseline, naive loop; FLOP floor
  swap            the engine's LoRA activation vs stock load_lora_weights + fuse_lora / unfuse + unload
  compile_break_even  images a run needs before compiling pays (from unet, unet_compiled, vae_decode),
                  beside the estimate behind engine.compiled.COMPILE_MIN_IMAGES
  unet_compiled_b2  batch 2 compiled (a second compilation, so last)

Tensors given to compiled code are made under torch.inference_mode(), as the engine's are: dynamo guards
on it, and an input made outside would compile the UNet or VAE a second time (minutes on a GPU).

On a machine without CUDA, `--device cpu --tiny` runs every section on the tiny model (small shapes,
dynamo's eager backend) to check the code paths; its figures mean nothing.

  python scripts/gpu_check.py --out gpu_check.json                 # on the GPU machine
  python scripts/gpu_check.py --device cpu --tiny --out /tmp/g.json  # smoke test on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (scripts/bench.py: model building, LoRA files, the three ways)


class Report:
    """The JSON report, written after every section; sections past the time budget are skipped."""

    def __init__(self, path: Path, budget: float):
        self.path, self.budget, self.start = path, budget, time.monotonic()
        self.data: dict = {"sections": {}, "skipped": [], "errors": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def section(self, name: str, fn, *args, need: float = 0.0) -> None:
        if self.elapsed() + need > self.budget:
            self.data["skipped"].append(name)
            print(f"[{self.elapsed():6.1f}s] {name}: skipped (budget)", flush=True)
            self.write()
            return
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        try:
            self.data["sections"][name] = fn(*args)
        except Exception as exc:  # a failing section must not lose the others' figures
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
            print(f"  error: {type(exc).__name__}: {exc}", flush=True)
        else:
            print(f"  {json.dumps(self.data['sections'][name], default=str)[:600]}", flush=True)
        self.write()


class Ctx:
    """What the sections share: the model, shapes, timers."""

    def __init__(self, args):
        import torch

        from expressiongrid.engine.loading import pick_device, torch_dtype
        from expressiongrid.engine.precision import resolve_dtype

        self.args, self.torch = args, torch
        self.device = pick_device(args.device)
        self.dtype_name = resolve_dtype(args.dtype, self.device)
        self.dtype = torch_dtype(self.dtype_name)
        self.cuda = self.device.type == "cuda"
        self.backend = args.backend or ("inductor" if self.cuda else "eager")
        self.size = args.size or (64 if args.tiny else 512)
        self.latent = self.size // 8
        self.steps = args.steps
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.compiled_unet = None  # CompiledUNet shared by the sections (one compilation per shape)
        self.compiled_decode = None
        self.loras: list[Path] = []

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def timed(self, fn, repeat: int) -> float:
        """Seconds per call of `fn` (after one warm-up call)."""
        fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeat


def section_env(c: Ctx) -> dict:
    import diffusers
    import torch

    import importlib.metadata as metadata

    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": str(c.device),
            "dtype": c.dtype_name, "backend": c.backend, "size": c.size, "tiny": c.args.tiny}
    for package in ("transformers", "peft", "tokenizers", "huggingface_hub", "triton"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if c.cuda:
        props = torch.cuda.get_device_properties(c.device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
    start = time.perf_counter()
    if c.args.tiny:
        from expressiongrid.engine import ModelSpec, load_model

        c.model = load_model(ModelSpec("tiny", dtype=c.dtype_name, device=str(c.device), compile="off"))
    else:
        c.model = bench.build_sd15_random(c.dtype, c.device)
    c.sync()
    info["build_s"] = round(time.perf_counter() - start, 2)
    info["unet_parameters_m"] = round(sum(p.numel() for p in c.model.pipe.unet.parameters()) / 1e6, 1)
    return info


def _unet_inputs(c: Ctx, batch: int):
    torch = c.torch
    gen = torch.Generator(c.device).manual_seed(0)
    x = torch.randn((batch, 4, c.latent, c.latent), generator=gen, device=c.device, dtype=c.dtype)
    ctx = torch.randn((batch, 77, c.model.pipe.text_encoder.config.hidden_size), generator=gen, device=c.device,
                      dtype=c.dtype)
    t = torch.tensor(500.0, device=c.device)
    return x, t, ctx


def _tflops(c: Ctx, batch: int, seconds: float) -> float:
    return bench.UNET_TFLOP_512 * (c.size / 512) ** 2 * batch / seconds


def section_unet(c: Ctx) -> dict:
    """UNet throughput eager: NCHW, then channels_last (the layout the compiled UNet uses from here on)."""
    torch, unet = c.torch, c.model.pipe.unet
    out: dict = {}
    repeat = c.args.repeat
    with torch.inference_mode():
        for layout in ("eager", "channels_last"):
            if layout == "channels_last":
                _channels_last(c, unet)
            for batch in (2, 18):
                x, t, ctx = _unet_inputs(c, batch)
                s = c.timed(lambda: unet(x, t, encoder_hidden_states=ctx, return_dict=False), repeat)
                out[f"{layout}_b{batch}"] = {"ms": round(s * 1000, 2), "calls_per_s": round(1 / s, 2),
                                            "tflops": round(_tflops(c, batch, s), 1)}
    out["note"] = "TFLOP/s from DESIGN.md's 0.803 TFLOP per 512px UNet evaluation (meaningless for --tiny)"
    return out


def _channels_last(c: Ctx, module) -> None:
    """`module` in channels-last format with ordinary weights, as enable_compile leaves it: converted under
    inference mode they would become inference tensors (in-place LoRA writes outside it would then fail,
    and dynamo's guards would differ from the engine's)."""
    with c.torch.inference_mode(False):
        module.to(memory_format=c.torch.channels_last)


def _compiled_unet_figures(c: Ctx, compiled, batch: int) -> dict:
    torch, unet = c.torch, c.model.pipe.unet
    with torch.inference_mode():
        x, t, ctx = _unet_inputs(c, batch)
        start = time.perf_counter()
        compiled(x, t, encoder_hidden_states=ctx)
        c.sync()
        compile_s = time.perf_counter() - start
        s = c.timed(lambda: compiled(x, t, encoder_hidden_states=ctx), c.args.repeat)
        eager = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        diff = (compiled(x, t, encoder_hidden_states=ctx)[0].float() - eager.float()).abs().max().item()
    return {"ms": round(s * 1000, 2), "calls_per_s": round(1 / s, 2), "tflops": round(_tflops(c, batch, s), 1),
            "compile_s": round(compile_s, 1), "max_abs_diff_vs_channels_last_eager": diff}


def section_unet_compiled(c: Ctx) -> dict:
    """The compiled UNet at batch 18 (a 9-row column: cond + uncond), shared by the later sections."""
    from expressiongrid.engine.compiled import CompiledUNet

    _channels_last(c, c.model.pipe.unet)  # as enable_compile does (a no-op after the `unet` section)
    c.compiled_unet = CompiledUNet(c.model.pipe.unet, backend=c.backend)
    return {"compiled_b18": _compiled_unet_figures(c, c.compiled_unet, 18)}


def section_unet_compiled_b2(c: Ctx) -> dict:
    """Batch 2 compiled in its own wrapper (the engine's would pad it to the 18 already compiled)."""
    from expressiongrid.engine.compiled import CompiledUNet

    return {"compiled_b2": _compiled_unet_figures(c, CompiledUNet(c.model.pipe.unet, backend=c.backend), 2)}


def _make_loras(c: Ctx, n: int) -> list[Path]:
    if len(c.loras) < n:
        c.loras = [bench.write_kohya_lora(c.model.pipe, c.tmp / f"char{i}.safetensors", seed=i) for i in range(n)]
    return c.loras[:n]


def _embedding_character(c: Ctx):
    from expressiongrid.characters import Character, EmbeddingRef
    from expressiongrid.characters import demo

    path = demo.save_a1111_embedding(c.tmp / "emb.pt", demo.embedding_vectors(c.model.pipe, n_vectors=4, seed=1))
    return Character(id="emb", label="emb", embeddings=[EmbeddingRef(path, "gpucheckemb")], text="gpucheckemb")


def section_recompiles(c: Ctx) -> dict:
    """The compiled UNet (batch 18) through three in-place LoRA swaps and an embedding column."""
    from expressiongrid.characters import Character, CharacterActivator, LoraRef
    from expressiongrid.engine.compiled import CompiledUNet
    from expressiongrid.prompts.conditioning import PromptEncoder

    torch = c.torch
    if c.compiled_unet is None:
        c.compiled_unet = CompiledUNet(c.model.pipe.unet, backend=c.backend)
    chars = [Character(id=f"char{i}", label=f"char{i}", loras=[LoraRef(p)]) for i, p in enumerate(_make_loras(c, 3))]
    chars.append(_embedding_character(c))
    activator = CharacterActivator(c.model)
    activator.prepare(chars)
    before = _compile_count()
    swaps, errors = [], []
    with torch.inference_mode():
        x, t, first_ctx = _unet_inputs(c, 18)
        c.compiled_unet(x, t, encoder_hidden_states=first_ctx)  # compiled here if not before
    baseline = _compile_count()
    # As in the runner: activation outside inference mode, encoding and the UNet call inside it.
    with torch.compiler.set_stance("fail_on_recompile"):
        for ch in chars:
            start = time.perf_counter()
            try:
                with activator.activate(ch) as active:
                    c.sync()
                    swap_in = time.perf_counter() - start
                    with torch.inference_mode():
                        encoder = PromptEncoder(c.model.pipe.tokenizer, c.model.pipe.text_encoder,
                                                embeddings=active.embeddings)
                        cond = encoder.encode_schedules([f"a photo of {ch.text or '1girl'}"] * 18, 1)
                        c.compiled_unet(x, t, encoder_hidden_states=cond.table[cond.index[:, 0]].to(c.dtype))
                    c.sync()
                    start = time.perf_counter()
                c.sync()
                swaps.append({"character": ch.id, "in_ms": round(swap_in * 1000, 1),
                              "out_ms": round((time.perf_counter() - start) * 1000, 1)})
            except Exception as exc:
                errors.append(f"{ch.id}: {type(exc).__name__}: {str(exc)[:300]}")
    return {"graphs_compiled_before": before, "graphs_compiled_after_first_call": baseline,
            "recompiles_during_swaps": _compile_count() - baseline, "errors_under_fail_on_recompile": errors,
            "swaps": swaps}


def _compile_count() -> int:
    """Graphs dynamo has compiled so far in this process (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def _count_syncs(fn) -> int:
    """Synchronising CUDA calls made by `fn` (torch's sync debug mode, one warning per sync)."""
    torch = __import__("torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def section_host_syncs(c: Ctx) -> dict:
    """9 rows: syncs per step with CPU noise (prepared / step by step) and GPU noise, for a few samplers."""
    from expressiongrid.engine import ImageRequest, make_scheduler
    from expressiongrid.engine.schedulers import set_timesteps
    from expressiongrid.engine.denoise import denoise_batch
    from expressiongrid.engine.generation import prompt_encoder, encode_batch
    from expressiongrid.engine.noise import initial_noise, make_generators
    from expressiongrid.prompts import total_model_calls
    from expressiongrid.samplers import get_sampler

    torch = c.torch
    steps = min(10, c.steps)
    prompts = bench.cell_prompts(["1girl"])[0]
    unet = c.compiled_unet or c.model.pipe.unet
    out: dict = {}
    cases = (("cpu_noise_prepared", "Euler a", "cpu", None), ("cpu_noise_step_by_step", "Euler a", "cpu", False),
             ("gpu_noise", "Euler a", "gpu", None), ("dpmpp_2m_karras", "DPM++ 2M Karras", "cpu", None), ("ddim", "DDIM", "cpu", None),
             ("dpmpp_2m_sde_karras_cpu_noise_prepared", "DPM++ 2M SDE Karras", "cpu", None))
    with torch.inference_mode():
        for label, sampler, source, prepare in cases:
            if source == "gpu" and not c.cuda:  # refused by the engine, as for a user's study on a CPU
                out[label] = {"skipped": "GPU noise needs a CUDA or MPS device"}
                continue
            name = get_sampler(sampler).name
            reqs = [ImageRequest(p, bench.NEGATIVE, seed=bench.SEED + i, steps=steps, width=c.size, height=c.size,
                                 sampler=sampler) for i, p in enumerate(prompts)]
            cond, uncond = encode_batch(prompt_encoder(c.model, None), reqs, total_model_calls(steps, name))

            def run():
                scheduler = make_scheduler(name, c.model.pipe.scheduler.config)
                set_timesteps(scheduler, steps, c.device)
                gens = make_generators([r.seed for r in reqs], source, c.device)
                latents = initial_noise(gens, (4, c.latent, c.latent), c.device, c.dtype)
                denoise_batch(unet, scheduler, latents, cond, uncond, [7.0] * len(reqs), generators=gens,
                              seeds=[r.seed for r in reqs], prepare_noise=prepare)
                c.sync()

            run()  # warm-up
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            if c.cuda:
                syncs = _count_syncs(run)
                out[label] = {"syncs": syncs, "syncs_per_step": round(syncs / steps, 2), "s_per_step": round(seconds / steps, 4)}
            else:
                out[label] = {"syncs": "n/a on CPU", "s_per_step": round(seconds / steps, 4)}
        out["text_encoder"] = _text_encoder_per_row(c, prompts)
    out["note"] = "syncs include the batch's setup (conditioning and CFG scales to the device, the noise copy)"
    return out


def _text_encoder_per_row(c: Ctx, prompts: list[str]) -> dict:
    """The engine's text-encoder cost per 77-token row (fixed batches, cached) against one batch of all rows."""
    from expressiongrid.prompts.conditioning import PromptEncoder

    torch = c.torch
    pipe = c.model.pipe
    texts = [p.replace("[", "").replace("]", "") + f", take {i}" for i, p in enumerate(prompts * 2)]

    def one_by_one():
        PromptEncoder(pipe.tokenizer, pipe.text_encoder).encode(texts)  # a fresh encoder: nothing cached
        c.sync()

    ids = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids = ids.to(c.device)

    def batched():
        pipe.text_encoder(input_ids=ids)
        c.sync()

    alone, together = c.timed(one_by_one, 2), c.timed(batched, 2)
    return {"rows": len(texts), "engine_ms_per_row": round(alone / len(texts) * 1000, 2),
            "one_batch_ms_per_row": round(together / len(texts) * 1000, 3)}


def section_vae(c: Ctx) -> dict:
    from expressiongrid.engine.compiled import CompiledDecode

    torch, vae = c.torch, c.model.pipe.vae
    out = {}
    with torch.inference_mode():  # latents made outside inference mode would compile the decode again later
        gen = torch.Generator(c.device).manual_seed(0)
        latents = torch.randn((9, 4, c.latent, c.latent), generator=gen, device=c.device, dtype=c.dtype)
        batched = c.timed(lambda: vae.decode(latents, return_dict=False), 2)
        single = c.timed(lambda: [vae.decode(latents[i:i + 1], return_dict=False) for i in range(9)], 2)
        out["eager_batch9_ms_per_image"] = round(batched / 9 * 1000, 2)
        out["eager_single_ms_per_image"] = round(single / 9 * 1000, 2)
        _channels_last(c, vae)  # as enable_compile does on CUDA
        channels_last = c.timed(lambda: vae.decode(latents, return_dict=False), 2)
        out["eager_channels_last_batch9_ms_per_image"] = round(channels_last / 9 * 1000, 2)
        c.compiled_decode = CompiledDecode(vae, backend=c.backend)
        start = time.perf_counter()
        got = c.compiled_decode(latents)
        c.sync()
        out["compile_s"] = round(time.perf_counter() - start, 1)
        compiled = c.timed(lambda: c.compiled_decode(latents), 2)
        out["compiled_batch9_ms_per_image"] = round(compiled / 9 * 1000, 2)
        want = vae.decode(latents, return_dict=False)[0]
        to8 = lambda im: ((im.float() / 2 + 0.5).clamp(0, 1) * 255).round()  # noqa: E731
        out["compiled_vs_eager_max_8bit_levels"] = (to8(got) - to8(want)).abs().max().item()
    return out


def section_swap(c: Ctx) -> dict:
    """LoRA in and out: the engine's in-place activation vs stock load + fuse / unfuse + unload."""
    from expressiongrid.characters import Character, CharacterActivator, LoraRef

    loras = _make_loras(c, 3)
    chars = [Character(id=f"char{i}", label=f"char{i}", loras=[LoraRef(p)]) for i, p in enumerate(loras)]
    activator = CharacterActivator(c.model)
    activator.prepare(chars)
    engine = []
    for ch in chars:
        t0 = time.perf_counter()
        with activator.activate(ch):
            c.sync()
            t1 = time.perf_counter()
        c.sync()
        engine.append(((t1 - t0) * 1000, (time.perf_counter() - t1) * 1000))
    pipe = bench.stock_pipeline(c.model, "Euler a")
    stock = []
    for path in loras:
        t0 = time.perf_counter()
        pipe.load_lora_weights(str(path), adapter_name="character")
        c.sync()
        t1 = time.perf_counter()
        pipe.fuse_lora()
        c.sync()
        t2 = time.perf_counter()
        pipe.unfuse_lora()
        c.sync()
        t3 = time.perf_counter()
        pipe.unload_lora_weights()
        c.sync()
        t4 = time.perf_counter()
        stock.append([round((b - a) * 1000, 1) for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))])
    mean = lambda rows, i: round(sum(r[i] for r in rows) / len(rows), 1)  # noqa: E731
    return {"engine_in_ms": mean(engine, 0), "engine_out_ms": mean(engine, 1),
            "stock_load_ms": mean(stock, 0), "stock_fuse_ms": mean(stock, 1), "stock_unfuse_ms": mean(stock, 2),
            "stock_unload_ms": mean(stock, 3), "files_prepared_before_clock": True}


def _bench_args(c: Ctx, steps: int, compile_: str) -> argparse.Namespace:
    return argparse.Namespace(steps=steps, cfg=7.0, size=c.size, sampler="Euler a", batch=None, compile=compile_)


def section_end_to_end(c: Ctx) -> dict:
    """One 9-row column each way (the engine on the compiled UNet and VAE decode)."""
    meter = bench.Meter(c.device)
    loras = _make_loras(c, 1 if c.args.tiny else 2)
    args = _bench_args(c, c.steps, "on")
    warm = _bench_args(c, 2, "on")
    _use_compiled(c)
    out = {}
    for way, columns in (("engine", loras), ("fair", loras), ("naive", loras[:1])):
        bench.WAYS[way](c.model, loras[:1], warm, meter)
        r = bench.WAYS[way](c.model, columns, args, meter)
        out[way] = {"images_per_s": round(r.images_per_second, 3), "images": r.images, "seconds": round(r.seconds, 2),
                    "swap": r.swap_text(), "peak_memory_gib": round((r.peak_memory or 0) / 2**30, 2), "note": r.note}
    out["engine_over_fair"] = round(out["engine"]["images_per_s"] / out["fair"]["images_per_s"], 2)
    out["engine_over_naive"] = round(out["engine"]["images_per_s"] / out["naive"]["images_per_s"], 2)
    floor = bench.floor_images_per_second(argparse.Namespace(size=c.size, steps=c.steps), c.args.peak_tflops)
    out["flop_floor_images_per_s"] = round(floor, 2)
    out["engine_fraction_of_floor"] = round(out["engine"]["images_per_s"] / floor, 3)
    out["steps"] = c.steps
    return out


def _use_compiled(c: Ctx) -> None:
    """Route the engine's calls through the compiled UNet and VAE decode (what enable_compile sets)."""
    c.model.unet_call, c.model.vae_decode = c.compiled_unet, c.compiled_decode
    c.model.compiled = c.compiled_unet is not None


def section_compiled_pixels(c: Ctx) -> dict:
    """The same column through the compiled and the uncompiled engine: 8-bit image difference."""
    import numpy as np

    from expressiongrid.engine import ImageRequest, generate

    reqs = [ImageRequest(p, bench.NEGATIVE, seed=bench.SEED, steps=c.steps, width=c.size, height=c.size)
            for p in bench.cell_prompts(["1girl"])[0]]
    if c.compiled_unet is None or c.compiled_decode is None:
        raise RuntimeError("needs the compiled UNet and VAE decode of the unet_compiled and vae_decode sections")
    _use_compiled(c)
    calls = []
    c.model.unet_call = lambda *a, **k: calls.append(1) or c.compiled_unet(*a, **k)  # noqa: E731
    compiled = generate(c.model, reqs, batch_size=len(reqs))
    c.model.unet_call = c.model.vae_decode = None
    try:
        eager = generate(c.model, reqs, batch_size=len(reqs))
    finally:
        _use_compiled(c)
    diffs = [np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)) for a, b in zip(compiled, eager)]
    return {"max_levels": int(max(d.max() for d in diffs)), "mean_levels": round(float(np.mean([d.mean() for d in diffs])), 4),
            "share_of_pixels_over_2_levels": round(float(np.mean([(d > 2).mean() for d in diffs])), 5),
            "compiled_unet_calls": len(calls)}


def section_compile_break_even(c: Ctx) -> dict:
    """From the figures above: the images a run needs before compiling has paid for itself.

    Per image of a 9-row column: `steps` UNet calls at batch 18 (cond + uncond), a ninth of each, plus its
    share of a batch-9 decode; eager in channels-last (what the engine runs uncompiled on CUDA) against
    compiled. Compared with the estimate behind ``engine.compiled.COMPILE_MIN_IMAGES``.
    """
    from expressiongrid.engine import compiled

    sections = c.report.data["sections"]
    missing = [name for name in ("unet", "unet_compiled", "vae_decode") if name not in sections]
    if missing:
        return {"not_computed": f"needs the figures of {', '.join(missing)} (skipped or failed)"}
    unet, vae = sections["unet"]["channels_last_b18"], sections["vae_decode"]
    unet_compiled = sections["unet_compiled"]["compiled_b18"]
    steps, rows = c.steps, 9
    eager = steps * unet["ms"] / rows / 1000 + vae["eager_channels_last_batch9_ms_per_image"] / 1000
    faster = steps * unet_compiled["ms"] / rows / 1000 + vae["compiled_batch9_ms_per_image"] / 1000
    compile_s = unet_compiled["compile_s"] + vae["compile_s"]
    return {"steps": steps, "eager_s_per_image": round(eager, 4), "compiled_s_per_image": round(faster, 4),
            "compile_s": round(compile_s, 1),
            "break_even_images": compiled.break_even_images(compile_s, eager, faster),
            "estimate": {"compile_s": compiled.COMPILE_SECONDS, "eager_s_per_image": compiled.EAGER_SECONDS_PER_IMAGE,
                         "compiled_s_per_image": compiled.COMPILED_SECONDS_PER_IMAGE,
                         "COMPILE_MIN_IMAGES": compiled.COMPILE_MIN_IMAGES}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model (CPU smoke test)")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor on CUDA, eager on CPU)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=20, help="steps for the end-to-end column")
    parser.add_argument("--rows", type=int, default=None, help="rows of a column (default 9; 3 with --tiny)")
    parser.add_argument("--repeat", type=int, default=10, help="timed UNet calls per measurement")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; later sections are skipped past it")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--only", default=None, help="comma-separated sections to run (env always runs)")
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    bench.ROWS = args.rows or (3 if args.tiny else len(bench.EXPRESSIONS))
    report = Report(args.out, args.budget)
    c = Ctx(args)
    c.report = report
    report.section("env", section_env, c)
    if "env" in report.data["errors"]:
        return 1
    # The stock ways (peft layers injected into the shared UNet) come after everything that uses the compiled one.
    # `need`: seconds a section is expected to take at SD1.5 size on an H100/H200 (a compilation: 1-2 minutes),
    # so one that cannot finish inside the budget is skipped rather than cut off by the caller's timeout.
    sections = [("unet", section_unet, 0), ("unet_compiled", section_unet_compiled, 60),
                ("recompiles", section_recompiles, 10), ("host_syncs", section_host_syncs, 15),
                ("vae_decode", section_vae, 45), ("compiled_pixels", section_compiled_pixels, 10),
                ("end_to_end", section_end_to_end, 60), ("swap", section_swap, 10),
                ("compile_break_even", section_compile_break_even, 0), ("unet_compiled_b2", section_unet_compiled_b2, 90)]
    only = set(args.only.split(",")) if args.only else None
    for name, fn, need in sections:
        if only is None or name in only:
            report.section(name, fn, c, need=need)
    print(f"written: {args.out}")
    return 0 if not report.data["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
