"""Shared test fixtures: the built-in tiny model, the compat corpus, temporary run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT.parent / "shared" / "compat"

# Two cores on CI: keep torch from oversubscribing when tests run next to each other.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_jsonl(name: str) -> list[dict]:
    """Rows of ``../shared/compat/<name>``; the corpus must be present (CI has it beside the clone)."""
    path = COMPAT / name
    if not path.exists():
        raise FileNotFoundError(f"compat corpus missing: {path} (expected ../shared beside the project)")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The built-in tiny SD1.5-shaped pipeline (fp32, CPU). Do not mutate it in tests; build your own if needed."""
    from expressiongrid.engine.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from expressiongrid.engine.tiny import build_tokenizer

    return build_tokenizer()
