#!/usr/bin/env python
"""How much does an image change with the batch it is made in? Batch 1 against batch 3 on the tiny model.

For each sampler and step count, three requests (different seeds and prompts) are made together in one
batch and each alone; the script reports, per sampler and step count, the largest difference of any 8-bit
value and the share of values that differ at all. CPU, fp32 (the tiny model's default).

    python scripts/batch_composition.py --steps 6 20 --samplers "Euler a" Euler "DPM++ 2M" DDIM

Prints one JSON line per (sampler, steps) and a summary line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[6, 20])
    parser.add_argument("--samplers", nargs="+", default=["Euler a", "Euler", "DPM++ 2M", "DDIM", "DPM++ 2M SDE"])
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)

    import torch

    from expressiongrid.engine import ImageRequest, ModelSpec, generate, load_model

    torch.manual_seed(0)
    model = load_model(ModelSpec(source="tiny", dtype="fp32", device="cpu"))
    prompts = ["a photo of a woman, smiling", "a photo of a woman, (angry:1.2)", "closeup, [sad:crying:0.5]"]
    worst = {"max_levels": 0, "share": 0.0}
    for sampler in args.samplers:
        for steps in args.steps:
            requests = [ImageRequest(prompt=p, negative_prompt="cartoon", seed=100 + i, steps=steps, cfg_scale=7.0,
                                     width=args.size, height=args.size, sampler=sampler)
                        for i, p in enumerate(prompts)]
            together = generate(model, requests, batch_size=3)
            alone = [generate(model, [r], batch_size=1)[0] for r in requests]
            diffs = [np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16))
                     for a, b in zip(together, alone)]
            row = {"sampler": sampler, "steps": steps,
                   "max_levels": int(max(d.max() for d in diffs)),
                   "share_differing": round(float(np.mean([np.mean(d > 0) for d in diffs])), 4),
                   "worst_image_share": round(float(max(np.mean(d > 0) for d in diffs)), 4)}
            worst["max_levels"] = max(worst["max_levels"], row["max_levels"])
            worst["share"] = max(worst["share"], row["worst_image_share"])
            print(json.dumps(row), flush=True)
    print(json.dumps({"summary": worst, "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
