"""scripts/bench.py runs the engine, the fair baseline and the naive loop on the tiny model and reports them."""

from __future__ import annotations

import pytest
import importlib.util
import re
from pathlib import Path

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def _load_bench():
    import sys

    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_bench_reports_three_ways_ratios_swap_times_and_memory(capsys):
    bench = _load_bench()
    assert bench.main(["--steps", "2", "--columns", "1", "--rows", "3"]) == 0
    out = capsys.readouterr().out
    rate = {w: float(re.search(rf"^{w}: ([\d.]+) images/s", out, re.M).group(1)) for w in ("engine", "fair", "naive")}
    assert all(v > 0 for v in rate.values())
    for other in ("fair", "naive"):
        ratio = float(re.search(rf"^ratio engine/{other}: ([\d.]+)x", out, re.M).group(1))
        assert abs(ratio - rate["engine"] / rate[other]) < 0.01 + 0.01 * ratio
    # the per-column LoRA swap of the engine and of the fair baseline, and a peak memory for each way
    assert re.search(r"^engine: .*LoRA swap \d+ ms in \+ \d+ ms out per column; .* [\d.]+ GiB\]", out, re.M)
    assert re.search(r"^fair: .*LoRA swap \d+ ms in \+ \d+ ms out per column", out, re.M)
    assert re.search(r"^machine: .+", out, re.M) and "3 rows x 1 columns = 3 images" in out
    assert "built-in tiny, fp32" in out  # dtype auto on the CPU


def test_flop_floor_matches_design_numbers():
    import argparse

    bench = _load_bench()
    # DESIGN.md: a 9 x 12 grid at 512x512, 20 steps cannot beat 22.8 images/s at 790 TFLOP/s.
    floor = bench.floor_images_per_second(argparse.Namespace(size=512, steps=20), 790.0)
    assert abs(floor - 22.8) < 0.1
