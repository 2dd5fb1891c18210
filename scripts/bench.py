"""Benchmark: the seed study's grid made by this engine vs. the plain one-image-at-a-time approach.

The grid is 9 expression rows x N character columns, one kohya-format LoRA per column (written on the fly
for the model at hand), the seed study's prompt with its prompt-editing bracket, one fixed seed.

- engine: per column, the column's LoRA is written into the weights (``CharacterActivator`` when the
  characters area is installed, else an equivalent in-place delta written here), then all 9 rows go
  through ``generate`` as one batch (one UNet call per model evaluation, one VAE decode).
- plain: one stock ``StableDiffusionPipeline`` call per image, loading the column's LoRA before and
  unloading it after every image (what a script around diffusers usually does). It gets the prompt text of
  the last schedule entry, since the stock pipeline has no prompt editing.

Both use the same sampler, steps, size, CFG, seeds and model weights. Images/s counts generation only
(model loading and LoRA file writing are outside the clock; the plain path's per-image LoRA load/unload
and the engine's per-column activation are inside it).

Examples:
  python scripts/bench.py                      # tiny model on the CPU, 64x64, 20 steps, 3 columns
  python scripts/bench.py --sd15-random --device cuda --dtype fp16 --size 512 --steps 20 --columns 12
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
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
    from expressiongrid.tiny import build_scheduler

    torch.manual_seed(0)
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
                       device=device, dtype=dtype, spec=ModelSpec("sd15-random"))


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


class InPlaceLora:
    """Stand-in for CharacterActivator when the characters area is absent: base + alpha/rank * up @ down."""

    def __init__(self, model):
        self.pipe = model.pipe

    def activate(self, path: Path):
        import contextlib

        import torch
        from safetensors.torch import load_file

        layers = {}
        for prefix, module in (("lora_unet_", self.pipe.unet), ("lora_te_text_model_", self.pipe.text_encoder)):
            for name, mod in module.named_modules():
                if isinstance(mod, torch.nn.Linear):
                    layers[prefix + name.removeprefix("text_model.").replace(".", "_")] = mod
        state = load_file(str(path))

        @contextlib.contextmanager
        def active():
            saved = {}
            try:
                for key in {k.rsplit(".", 2)[0] for k in state if k.endswith("lora_down.weight")}:
                    layer = layers[key]
                    down, up = state[f"{key}.lora_down.weight"].float(), state[f"{key}.lora_up.weight"].float()
                    scale = float(state[f"{key}.alpha"]) / down.shape[0]
                    saved[key] = layer.weight.detach().clone()
                    with torch.no_grad():
                        layer.weight.add_((scale * up @ down).to(layer.weight))
                yield None
            finally:
                with torch.no_grad():
                    for key, weight in saved.items():
                        layers[key].weight.copy_(weight)

        return active()


def cell_prompts(characters: list[str]):
    return [[PROMPT.format(expression=e, character=c) for e in EXPRESSIONS] for c in characters]


def run_engine(model, lora_files, args, sync) -> tuple[float, str]:
    from expressiongrid.engine import ImageRequest, generate

    columns = cell_prompts([f"<lora:char{i}:1> 1girl" for i in range(len(lora_files))])
    try:
        from expressiongrid.characters import Character, CharacterActivator, LoraRef

        activator = CharacterActivator(model)
        chars = [Character(id=f"char{i}", label=f"char{i}", loras=[LoraRef(p)]) for i, p in enumerate(lora_files)]
        activator.prepare(chars)  # reads every file once, before the clock
        activate = [lambda ch=ch: activator.activate(ch) for ch in chars]
        how = "CharacterActivator (LoRA written into the weights per column)"
    except ImportError:
        writer = InPlaceLora(model)
        activate = [lambda p=p: writer.activate(p) for p in lora_files]
        how = "in-place LoRA deltas written by bench.py (characters area not installed)"

    sync()
    start = time.perf_counter()
    n = 0
    for prompts, enter in zip(columns, activate):
        with enter() as active:
            embeddings = getattr(active, "embeddings", None)
            requests = [ImageRequest(p, NEGATIVE, seed=SEED, steps=args.steps, cfg_scale=args.cfg,
                                     width=args.size, height=args.size, sampler=args.sampler) for p in prompts]
            results = generate(model, requests, batch_size=args.batch or len(requests), embeddings=embeddings)
            if not all(r.ok for r in results):
                raise SystemExit(f"engine: failed images: {[r.error for r in results if not r.ok]}")
            n += len(results)
    sync()
    return n / (time.perf_counter() - start), how


def run_plain(model, lora_files, args, sync) -> float:
    import torch
    from diffusers import StableDiffusionPipeline

    from expressiongrid.engine.schedulers import make_scheduler
    from expressiongrid.prompts import get_schedule

    pipe = StableDiffusionPipeline(**model.pipe.components)
    pipe.scheduler = make_scheduler(args.sampler, model.pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    columns = cell_prompts(["1girl"] * len(lora_files))
    sync()
    start = time.perf_counter()
    n = 0
    for prompts, lora in zip(columns, lora_files):
        for prompt in prompts:
            text = get_schedule(prompt, args.steps)[-1][1]  # no prompt editing in the stock pipeline
            pipe.load_lora_weights(str(lora), adapter_name="character")
            pipe(prompt=text, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=args.cfg,
                 height=args.size, width=args.size, generator=torch.Generator("cpu").manual_seed(SEED),
                 output_type="pil")
            pipe.unload_lora_weights()
            n += 1
    sync()
    return n / (time.perf_counter() - start)


def floor_images_per_second(args, peak_tflops: float) -> float:
    """Images/s no program can beat on a device of `peak_tflops`: DESIGN.md's work per image."""
    pixels = args.size * args.size / (512 * 512)
    tflop = (2 * UNET_TFLOP_512 * args.steps + VAE_TFLOP_512) * pixels + 2 * CLIP_TFLOP / len(EXPRESSIONS)
    return peak_tflops / tflop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15-random", action="store_true", help="full-size SD1.5 with random weights")
    parser.add_argument("--columns", type=int, default=3, help="character columns (default 3)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 tiny, 512 SD1.5)")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--dtype", default=None, help="fp32/fp16/bf16 (default fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=None, help="engine batch size (default: a whole column)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the FLOP floor (default 790 on CUDA: H100 dense bf16)")
    parser.add_argument("--skip-plain", action="store_true", help="time only the engine")
    args = parser.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # The stock pipeline warns about the disabled safety checker on every LoRA load: keep the report readable
    # (and put the libraries' settings back afterwards, for callers that run main() in-process).
    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        return _run(args)
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


def _run(args) -> int:
    import torch

    from expressiongrid.engine import ModelSpec, load_model
    from expressiongrid.engine.loading import pick_device, torch_dtype

    device = pick_device(args.device)
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    args.size = args.size or (512 if args.sd15_random else 64)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.sd15_random:
        model = build_sd15_random(torch_dtype(dtype_name), device)
    else:
        model = load_model(ModelSpec("tiny", dtype=dtype_name, device=str(device)))

    with tempfile.TemporaryDirectory() as tmp:
        loras = [write_kohya_lora(model.pipe, Path(tmp) / f"char{i}.safetensors", seed=i) for i in range(args.columns)]
        # Warm-up (kernels, allocator, lazy imports) on one small column, for both paths alike.
        warm = argparse.Namespace(**{**vars(args), "steps": 2})
        run_engine(model, loras[:1], warm, sync)
        if not args.skip_plain:
            run_plain(model, loras[:1], argparse.Namespace(**{**vars(warm)}), sync)
        gc.collect()
        engine_ips, how = run_engine(model, loras, args, sync)
        plain_ips = None if args.skip_plain else run_plain(model, loras, args, sync)

    n_images = len(EXPRESSIONS) * args.columns
    print(f"machine: {machine_description(device)}")
    print(f"model: {'SD1.5 architecture, random weights' if args.sd15_random else 'built-in tiny'}, {dtype_name}, "
          f"{args.size}x{args.size}, {args.steps} steps, {args.sampler}, CFG {args.cfg}, "
          f"{len(EXPRESSIONS)} rows x {args.columns} columns = {n_images} images")
    print(f"engine LoRA activation: {how}")
    print(f"engine: {engine_ips:.3f} images/s")
    if plain_ips is not None:
        print("plain (stock pipeline, LoRA load/unload per image): "
              f"{plain_ips:.3f} images/s")
        print(f"ratio engine/plain: {engine_ips / plain_ips:.2f}x")
    if args.sd15_random:
        peak = args.peak_tflops or (790.0 if device.type == "cuda" else None)
        if peak:
            floor = floor_images_per_second(args, peak)
            print(f"FLOP floor at {peak:.0f} TFLOP/s: {floor:.2f} images/s; engine reaches {engine_ips / floor:.1%}")
        else:
            print("FLOP floor: give --peak-tflops for this device to get the fraction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
