"""scripts/bench.py runs both approaches on the tiny model and reports images/s and their ratio."""

from __future__ import annotations

import pytest
import importlib.util
import re
from pathlib import Path

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def test_bench_reports_both_approaches_and_ratio(capsys):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--steps", "2", "--columns", "1"]) == 0
    out = capsys.readouterr().out
    engine = float(re.search(r"^engine: ([\d.]+) images/s", out, re.M).group(1))
    plain = float(re.search(r"^plain .*: ([\d.]+) images/s", out, re.M).group(1))
    ratio = float(re.search(r"^ratio engine/plain: ([\d.]+)x", out, re.M).group(1))
    assert engine > 0 and plain > 0 and abs(ratio - engine / plain) < 0.01 + 0.01 * ratio
    assert re.search(r"^machine: .+", out, re.M) and "9 rows x 1 columns = 9 images" in out


def test_flop_floor_matches_design_numbers():
    import argparse

    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # DESIGN.md: a 9 x 12 grid at 512x512, 20 steps cannot beat 22.8 images/s at 790 TFLOP/s.
    floor = bench.floor_images_per_second(argparse.Namespace(size=512, steps=20), 790.0)
    assert abs(floor - 22.8) < 0.1
