"""Benchmark: the seed study's grid made three ways in one run, on the same weights.

The grid is 9 expression rows x N character columns, one kohya-format LoRA per column (written on the fly
for the model at hand), the seed study's prompt with its prompt-editing bracket, one fixed seed.

- engine: per column, ``CharacterActivator`` writes the column's LoRA into the weights in place, then
  all 9 rows go through ``generate`` as one batch (one UNet call per model evaluation, one VAE decode;
  torch.compile on CUDA unless ``--compile off``).
- fair: what a competent diffusers user writes: the stock ``StableDiffusionPipeline``, the column's LoRA
  loaded with ``load_lora_weights`` and fused once per column (``fuse_lora``; unfused and unloaded after
  the column), all 9 rows of the column in one pipeline call with one generator per row.
- naive: one stock pipeline call per image, loading the LoRA before and unloading it after every image.

The stock pipeline has no prompt editing, so both stock ways get the text of the last schedule entry.
All three use the same sampler, steps, size, CFG, seeds and dtype. Images/s counts generation with the
per-column LoRA work inside the clock (model building, LoRA file writing and a warm-up column, which also
compiles, are outside it). Each way is warmed up and timed before the next starts, so the stock ways'
peft layers never touch the engine's compiled UNet.

Examples:
  python scripts/bench.py                      # tiny model on the CPU, 64x64, 20 steps, 3 columns
  python scripts/bench.py --sd15-random --device cuda --size 512 --steps 20 --columns 12
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPRESSIONS = [
    "neutral face expression", "bored", "frowning", "confused", "open mouth smiling",
    "closed mouth closed smiling", "laughing hysterically", "crying", "angry",
]
PROMPT = "closeup of woman facing viewer, [hair, neck, eyes, lips: {expression}: 0.2], RAW photo, {character}"
NEGATIVE = "blurry, lowres, drawing"
SEED = 1234

# DESIGN.md's measured work at 512x512 (torch FLOP counter, classic attention). Its total for the 9 x 12
# grid at 20 steps (3.75 PFLOP, 22.8 images/s at 790 TFLOP/s) works out to 0.803 TFLOP per UNet evaluation
# of one image, two evaluations (cond + uncond) per step, plus the VAE decode. Scaled by pixel count for
# other sizes (attention grows faster, so at other sizes the floor is approximate).
UNET_TFLOP_512 = 0.803  # one UNet evaluation, one image
VAE_TFLOP_512 = 2.51
CLIP_TFLOP = 0.013


def machine_description(device) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if device.type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
    return "; ".join(parts)


def build_sd15_random(dtype, device):
    """Full-size SD1.5 (UNet, VAE, CLIP-L text encoder) from the shipped configs, seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from expressiongrid.engine.loading import SD15_CONFIG_DIR, LoadedModel, ModelSpec
    from expressiongrid.engine.precision import allow_tf32
    from expressiongrid.tiny import build_scheduler

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: the CPU init of 1 B parameters takes long
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    for part in (unet, vae, text_encoder):
        part.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe=pipe, name="sd15-random", hash=None, vae_name=None, vae_hash=None, family="sd15",
                       device=device, dtype=dtype, spec=ModelSpec("sd15-random"),
                       tf32=allow_tf32(device, {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]))


def write_kohya_lora(pipe, path: Path, seed: int, rank: int = 8, alpha: float = 4.0) -> Path:
    """A kohya/A1111-format LoRA on every attention projection of the UNet and text encoder."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    state = {}

    def add(key: str, layer) -> None:
        scale = 0.5 / rank
        state[f"{key}.lora_down.weight"] = (torch.randn(rank, layer.in_features, generator=gen) * scale).to(torch.float16)
        state[f"{key}.lora_up.weight"] = (torch.randn(layer.out_features, rank, generator=gen) * scale).to(torch.float16)
        state[f"{key}.alpha"] = torch.tensor(alpha)

    for name, mod in pipe.unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and (".attn1." in name or ".attn2." in name):
            add("lora_unet_" + name.replace(".", "_"), mod)
    for name, mod in pipe.text_encoder.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".self_attn." in name:
            add("lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_"), mod)
    save_file(state, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    return path


@dataclass
class WayResult:
    """One way's figures: images/s, per-column LoRA swap seconds (in, out), peak memory in bytes."""

    name: str
    images: int = 0
    seconds: float = 0.0
    swap_in: list[float] = field(default_factory=list)
    swap_out: list[float] = field(default_factory=list)
    peak_memory: int | None = None
    note: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def swap_text(self) -> str:
        if not self.swap_in:
            return "n/a"
        mean = lambda xs: sum(xs) / len(xs) * 1000  # noqa: E731
        return f"{mean(self.swap_in):.0f} ms in + {mean(self.swap_out):.0f} ms out per column"


ROWS = len(EXPRESSIONS)  # --rows lowers it (for quick checks)


def cell_prompts(characters: list[str]):
    return [[PROMPT.format(expression=e, character=c) for e in EXPRESSIONS[:ROWS]] for c in characters]


class Meter:
    """Device synchronisation, timing and peak memory for one way."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(self.torch.cuda.max_memory_allocated(self.device))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak so far (Linux: KiB)


def run_engine(model, lora_files, args, meter: Meter) -> WayResult:
    """This engine: per column one in-place LoRA activation, the 9 rows as one batch."""
    from expressiongrid.characters import Character, CharacterActivator, LoraRef
    from expressiongrid.engine import ImageRequest, generate

    columns = cell_prompts([f"<lora:char{i}:1> 1girl" for i in range(len(lora_files))])
    activator = CharacterActivator(model)
    chars = [Character(id=f"char{i}", label=f"char{i}", loras=[LoraRef(p)]) for i, p in enumerate(lora_files)]
    activator.prepare(chars)  # reads every file once, before the clock
    result = WayResult("engine", note="compiled" if model.compiled else "not compiled")
    retried = 0
    meter.reset_peak()
    start = meter.now()
    for prompts, ch in zip(columns, chars):
        t0 = meter.now()
        with activator.activate(ch) as active:
            result.swap_in.append(meter.now() - t0)
            requests = [ImageRequest(p, NEGATIVE, seed=SEED, steps=args.steps, cfg_scale=args.cfg,
                                     width=args.size, height=args.size, sampler=args.sampler) for p in prompts]
            results = generate(model, requests, batch_size=args.batch or len(requests), embeddings=active.embeddings)
            t1 = meter.now()
        result.swap_out.append(meter.now() - t1)
        if not all(r.ok for r in results):
            raise SystemExit(f"engine: failed images: {[r.error for r in results if not r.ok]}")
        result.images += len(results)
        retried += sum(r.nan_retried for r in results)
    result.seconds = meter.now() - start
    result.peak_memory = meter.peak()
    if retried:  # the fp16 VAE overflowed: those images were decoded a second time, in fp32
        result.note += f"; {retried} images decoded again in fp32"
    return result


def stock_pipeline(model, sampler: str):
    """A stock ``StableDiffusionPipeline`` on the model's modules, with the benchmark's sampler."""
    from diffusers import StableDiffusionPipeline

    from expressiongrid.engine.schedulers import make_scheduler

    pipe = StableDiffusionPipeline(**model.pipe.components)
    pipe.scheduler = make_scheduler(sampler, model.pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock_text(prompt: str, steps: int) -> str:
    from expressiongrid.prompts import get_schedule

    return get_schedule(prompt, steps)[-1][1]  # no prompt editing in the stock pipeline


def run_fair(model, lora_files, args, meter: Meter) -> WayResult:
    """The fair baseline: stock pipeline, LoRA loaded and fused once per column, a column per call."""
    import torch

    pipe = stock_pipeline(model, args.sampler)
    columns = cell_prompts(["1girl"] * len(lora_files))
    result = WayResult("fair")
    meter.reset_peak()
    start = meter.now()
    for prompts, lora in zip(columns, lora_files):
        t0 = meter.now()
        pipe.load_lora_weights(str(lora), adapter_name="character")
        pipe.fuse_lora()
        result.swap_in.append(meter.now() - t0)
        texts = [_stock_text(p, args.steps) for p in prompts]
        pipe(prompt=texts, negative_prompt=[NEGATIVE] * len(texts), num_inference_steps=args.steps,
             guidance_scale=args.cfg, height=args.size, width=args.size, output_type="pil",
             generator=[torch.Generator("cpu").manual_seed(SEED) for _ in texts])
        t1 = meter.now()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        result.swap_out.append(meter.now() - t1)
        result.images += len(texts)
    result.seconds = meter.now() - start
    result.peak_memory = meter.peak()
    return result


def run_naive(model, lora_files, args, meter: Meter) -> WayResult:
    """The naive loop: one stock pipeline call per image, LoRA loaded and unloaded around every image."""
    import torch

    pipe = stock_pipeline(model, args.sampler)
    columns = cell_prompts(["1girl"] * len(lora_files))
    result = WayResult("naive")
    meter.reset_peak()
    start = meter.now()
    for prompts, lora in zip(columns, lora_files):
        for prompt in prompts:
            pipe.load_lora_weights(str(lora), adapter_name="character")
            pipe(prompt=_stock_text(prompt, args.steps), negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                 guidance_scale=args.cfg, height=args.size, width=args.size,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")
            pipe.unload_lora_weights()
            result.images += 1
    result.seconds = meter.now() - start
    result.peak_memory = meter.peak()
    return result


WAYS = {"engine": run_engine, "fair": run_fair, "naive": run_naive}


def floor_images_per_second(args, peak_tflops: float) -> float:
    """Images/s no program can beat on a device of `peak_tflops`: DESIGN.md's work per image."""
    pixels = args.size * args.size / (512 * 512)
    tflop = (2 * UNET_TFLOP_512 * args.steps + VAE_TFLOP_512) * pixels + 2 * CLIP_TFLOP / ROWS
    return peak_tflops / tflop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15-random", action="store_true", help="full-size SD1.5 with random weights")
    parser.add_argument("--columns", type=int, default=3, help="character columns (default 3)")
    parser.add_argument("--naive-columns", type=int, default=None,
                        help="columns for the naive loop (default: all; it is the slow one)")
    parser.add_argument("--rows", type=int, default=len(EXPRESSIONS), help="expression rows (default 9)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 tiny, 512 SD1.5)")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--dtype", default="auto", help="auto/fp32/fp16/bf16 (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile for the engine (auto: on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="engine batch size (default: a whole column)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the FLOP floor (default 790 on CUDA: H100/H200 dense bf16)")
    parser.add_argument("--ways", default="engine,fair,naive", help="comma-separated subset of engine,fair,naive")
    args = parser.parse_args(argv)
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = [w for w in ways if w not in WAYS]
    if unknown or not ways:
        parser.error(f"--ways: unknown {unknown}; choose from {', '.join(WAYS)}")

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # The stock pipeline warns about the disabled safety checker on every LoRA load: keep the report readable
    # (and put the libraries' settings back afterwards, for callers that run main() in-process).
    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        return _run(args, ways)
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


def build_model(args):
    """The benchmark's model: the tiny one or random full-size SD1.5, compiled as `args.compile` says."""
    from expressiongrid.engine import ModelSpec, load_model
    from expressiongrid.engine.compiled import should_compile
    from expressiongrid.engine.loading import enable_compile, pick_device, torch_dtype
    from expressiongrid.engine.precision import resolve_dtype

    device = pick_device(args.device)
    dtype_name = resolve_dtype(args.dtype, device)
    if not args.sd15_random:
        return load_model(ModelSpec("tiny", dtype=dtype_name, device=str(device), compile=args.compile))
    model = build_sd15_random(torch_dtype(dtype_name), device)
    return enable_compile(model) if should_compile(args.compile, device) else model


def _run(args, ways: list[str]) -> int:
    global ROWS
    ROWS = max(1, min(args.rows, len(EXPRESSIONS)))
    args.size = args.size or (512 if args.sd15_random else 64)
    model = build_model(args)
    meter = Meter(model.device)
    results: dict[str, WayResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loras = [write_kohya_lora(model.pipe, Path(tmp) / f"char{i}.safetensors", seed=i) for i in range(args.columns)]
        warm = argparse.Namespace(**{**vars(args), "steps": 2})
        for way in ways:
            columns = loras[: args.naive_columns] if way == "naive" and args.naive_columns else loras
            # Warm-up (kernels, allocator, lazy imports; the engine's compilation) on one column, same shapes.
            WAYS[way](model, loras[:1], warm, meter)
            results[way] = WAYS[way](model, columns, args, meter)

    print(f"machine: {machine_description(model.device)}")
    print(f"model: {'SD1.5 architecture, random weights' if args.sd15_random else 'built-in tiny'}, "
          f"{model.dtype_name}{' (TF32 matmuls)' if model.tf32 else ''}, {args.size}x{args.size}, {args.steps} steps, "
          f"{args.sampler}, CFG {args.cfg}, {ROWS} rows x {args.columns} columns = {ROWS * args.columns} images")
    labels = {"engine": f"engine ({results['engine'].note})" if "engine" in results else "engine",
              "fair": "fair (stock pipeline, a column per call, LoRA fused once per column)",
              "naive": "naive (stock pipeline per image, LoRA loaded/unloaded per image)"}
    memory = "peak GPU memory" if model.device.type == "cuda" else "process peak RSS so far"
    for way, r in results.items():
        print(f"{way}: {r.images_per_second:.3f} images/s  [{labels[way]}; {r.images} images in {r.seconds:.1f} s; "
              f"LoRA swap {r.swap_text()}; {memory} {r.peak_memory / 2**30:.2f} GiB]")
    if "engine" in results:
        for other in ("fair", "naive"):
            if other in results:
                print(f"ratio engine/{other}: {results['engine'].images_per_second / results[other].images_per_second:.2f}x")
    if args.sd15_random:  # DESIGN.md's FLOP counts are SD1.5's
        peak = args.peak_tflops or (790.0 if model.device.type == "cuda" else None)
        if peak:
            floor = floor_images_per_second(args, peak)
            reach = ", ".join(f"{w} {r.images_per_second / floor:.1%}" for w, r in results.items())
            print(f"FLOP floor at {peak:.0f} TFLOP/s: {floor:.2f} images/s; reached: {reach}")
        else:
            print("FLOP floor: give --peak-tflops for this device to get the fraction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
