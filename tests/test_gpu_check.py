"""scripts/gpu_check.py runs every section on the CPU with the tiny model (its code paths, not its figures)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _gpu_check():
    """scripts/gpu_check.py as a module (it is a script, not part of the package)."""
    import sys

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1500)  # every section of a GPU script, on the CPU: the longest test of this area
def test_gpu_check_smoke_run_writes_every_section(tmp_path):
    gpu_check = _gpu_check()
    out = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--repeat", "1", "--budget", "3600",
                           "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["errors"] == {} and code == 0
    assert data["skipped"] == []
    sections = data["sections"]
    assert set(sections) == {"env", "unet", "unet_compiled", "recompiles", "host_syncs", "vae_decode",
                             "compiled_pixels", "end_to_end", "swap", "unet_compiled_b2",
                             "compile_break_even"}
    assert {"eager_b2", "eager_b18", "channels_last_b18"} <= set(sections["unet"])
    assert "compiled_b18" in sections["unet_compiled"] and "compiled_b2" in sections["unet_compiled_b2"]
    assert {"dpmpp_2m_karras", "text_encoder"} <= set(sections["host_syncs"])
    # LoRA swaps and the embedding column ran under fail_on_recompile without recompiling
    assert sections["recompiles"]["recompiles_during_swaps"] == 0
    assert sections["recompiles"]["errors_under_fail_on_recompile"] == []
    assert len(sections["recompiles"]["swaps"]) == 4
    assert sections["compiled_pixels"]["max_levels"] <= 1
    assert sections["compiled_pixels"]["compiled_unet_calls"] == 2  # the compiled column ran compiled (2 steps)
    e2e = sections["end_to_end"]
    assert all(e2e[w]["images_per_s"] > 0 for w in ("engine", "fair", "naive"))
    even = sections["compile_break_even"]
    assert even["compile_s"] > 0 and even["eager_s_per_image"] > 0 and even["compiled_s_per_image"] > 0
    if even["compiled_s_per_image"] < even["eager_s_per_image"]:
        assert even["break_even_images"] * (even["eager_s_per_image"] - even["compiled_s_per_image"]) >= even["compile_s"] * 0.99
    else:
        assert even["break_even_images"] is None


def test_gpu_check_skips_what_its_budget_cannot_hold_and_still_writes_the_report(tmp_path):
    """The device-time bound: a section that would end past --budget is skipped and named, and the JSON
    that a caller's timeout would otherwise cut short is complete."""
    import sys

    spec = importlib.util.spec_from_file_location("gpu_check_budget", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_budget"] = gpu_check
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--repeat", "1", "--budget", "30",
                           "--only", "unet,unet_compiled,end_to_end", "--out", str(out)])
    data = json.loads(out.read_text())
    assert code == 0 and data["errors"] == {}
    # the sections expected to need a compile (60 s) or a column each way (60 s) do not fit in 30 s
    assert "unet" in data["sections"] and data["skipped"] == ["unet_compiled", "end_to_end"]
