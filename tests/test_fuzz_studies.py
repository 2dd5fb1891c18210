"""A small sample of the study-file mutation fuzzer (scripts/fuzz_studies.py; the recorded 10,000-mutant run
is in docs/prompt-syntax.md): every mutant is planned or refused with one error line, never a traceback."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_studies.py"


def test_two_hundred_mutated_studies_give_no_traceback():
    spec = importlib.util.spec_from_file_location("fuzz_studies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.fuzz(200, seed=7, max_seconds=30.0)
    assert summary["failures"] == {}
    assert summary["exit_codes"].get("2", 0) > 50 and summary["exit_codes"].get("0", 0) > 0  # both paths taken
