"""What a non-editable install gets: the license, the expression sets, the example study and character
templates (written by `expressiongrid init`), checked on a wheel built from this tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "expressiongrid", src / "expressiongrid",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("expressiongrid-*.whl")
    return built


def test_wheel_carries_license_templates_and_expression_sets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for template in ("examples/seed-study.toml", "characters/example-lora.toml", "characters/example-embedding.toml",
                     "characters/README.md"):
        assert f"expressiongrid/data/templates/{template}" in names, template
    assert "expressiongrid/data/expressions/seed_study.toml" in names
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "MIT"}


def test_init_from_the_installed_wheel_writes_a_study_that_runs(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the unpacked wheel, not this checkout
    work = tmp_path / "work"
    work.mkdir()
    init = subprocess.run([sys.executable, "-m", "expressiongrid", "init", "mine"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    study = work / "mine" / "examples" / "seed-study.toml"
    assert study.read_bytes() == (ROOT / "examples" / "seed-study.toml").read_bytes()
    assert (work / "mine" / "characters" / "example-lora.toml").is_file() and (work / "mine" / "characters" / "mine").is_dir()
    assert "--dry-run" in init.stdout
    again = subprocess.run([sys.executable, "-m", "expressiongrid", "init", "mine"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "would overwrite" in again.stderr  # the user's edits are not clobbered
    # the written study is the checkout's: on the tiny model, with a copied character template pointed at
    # nothing yet, the dry run reports just the placeholders to fill in
    dry = subprocess.run([sys.executable, "-m", "expressiongrid", "run", str(study), "--dry-run"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 2
    assert "model.source" in dry.stderr and "realisticVisionV51_v51VAE.safetensors" in dry.stderr
