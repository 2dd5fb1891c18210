"""Crash-safe resume: real runs of the tiny model killed with SIGKILL at several moments, then finished.

Also holds the helpers the other overnight tests (faults, queue, distributed) import: a small study on the
tiny model with generated character files, running the CLI as a child process, reading the run store.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
_CHARACTERS: dict[str, Path] = {}


def demo_characters(root: Path) -> Path:
    """A folder with the demo LoRA and embedding characters for the tiny model (made once per session)."""
    if "dir" not in _CHARACTERS:
        from expressiongrid.characters.demo import make_demo_characters
        from expressiongrid.tiny import build_tiny_pipeline

        folder = root / "characters"
        make_demo_characters(build_tiny_pipeline(), folder)
        _CHARACTERS["dir"] = folder
    return _CHARACTERS["dir"]


def make_misfit_lora(folder: Path) -> Path:
    """A well-formed LoRA file (it passes every header check) whose one matrix does not fit the model.

    That is what a LoRA for another model, or a damaged conversion, looks like: loading it fails only when
    its weights are written into the model, in the middle of the night.
    """
    from safetensors.torch import load_file, save_file
    import torch

    weights = load_file(str(folder / "demo_lora.safetensors"))
    key = sorted(k for k in weights if k.endswith("lora_up.weight"))[0]
    rows, rank = weights[key].shape
    weights[key] = torch.zeros(rows + 3, rank)
    path = folder / "misfit_lora.safetensors"
    save_file(weights, str(path))
    return path


STUDY = """\
name = "{name}"
[model]
source = "tiny"
[sampling]
sampler = "Euler a"
steps = {steps}
cfg_scale = 7
width = 64
height = 64
seed = 1234
{batch}
[prompt]
positive = "closeup of woman facing viewer, [hair, neck, eyes, lips: {{expression}}: 0.2], {{character}}"
reference = "1girl"
[rows]
axis = "expressions"
values = {rows}
[columns]
axis = "characters"
reference = true
files = {files}
"""


def write_study(folder: Path, name: str, characters: Path, *, files=("demo-lora.toml", "demo-embedding.toml"),
                rows=("neutral", "smiling", "angry"), steps: int = 3, batch_size: int | None = None) -> Path:
    """A study file on the tiny model (64x64): reference + the given character files x the given rows."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(characters / f) for f in files]
    text = STUDY.format(name=name, steps=steps, rows=list(rows), files=paths,
                        batch=f"batch_size = {batch_size}" if batch_size else "")
    path = folder / f"{name}.toml"
    path.write_text(text.replace("'", '"'), encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", EXPRESSIONGRID_NO_PROGRESS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m expressiongrid ARGS` in a fresh interpreter, as a user (or the queue) runs it."""
    return subprocess.run([sys.executable, "-m", "expressiongrid", *args], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=ROOT)


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "expressiongrid", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env or cli_env(), cwd=ROOT, start_new_session=True)


def db_counts(run_dir: Path) -> dict[str, int]:
    """Cells per status in the latest plan, read without disturbing a writer ({} if there is no plan yet)."""
    db = run_dir / "run.sqlite"
    if not db.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM cells WHERE run_id = (SELECT MAX(id) FROM runs) GROUP BY status"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    return dict(rows)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 90) -> None:
    """SIGKILL the run (its whole process group) as soon as `ready()` is true; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill the run"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def cells(run_dir: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(run_dir / "run.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM cells WHERE run_id = (SELECT MAX(id) FROM runs) ORDER BY key").fetchall()
    finally:
        conn.close()


def open_verified(path: Path) -> np.ndarray:
    """The image's pixels after PIL's integrity check (a truncated or corrupt PNG raises)."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def done_images(run_dir: Path) -> dict[str, np.ndarray]:
    return {c["key"]: open_verified(run_dir / c["file"]) for c in cells(run_dir) if c["status"] == "done"}


# A test-only hook loaded by the child interpreter (sitecustomize): pauses the Nth cell PNG write just before
# or just after its rename, and says so through a marker file, so the test can SIGKILL the run mid-write.
_PAUSE_HOOK = textwrap.dedent(
    """
    import os, time
    _phase = os.environ.get("EG_TEST_PAUSE_PHASE")
    if _phase:
        _at, _marker, _real, _seen = int(os.environ["EG_TEST_PAUSE_AT"]), os.environ["EG_TEST_PAUSE_MARKER"], os.replace, [0]
        def _replace(src, dst, *args, **kwargs):
            target = str(dst)
            if not (target.endswith(".png") and os.sep + "cells" + os.sep in target):
                return _real(src, dst, *args, **kwargs)
            _seen[0] += 1
            if _seen[0] == _at and _phase == "before":
                open(_marker, "w").write(str(src))
                time.sleep(60)
            result = _real(src, dst, *args, **kwargs)
            if _seen[0] == _at and _phase == "after":
                open(_marker, "w").write(target)
                time.sleep(60)
            return result
        os.replace = _replace
    """
)


def test_sigkill_at_any_moment_then_resume_gives_every_cell_once_and_identical_images(tmp_path):
    characters = demo_characters(tmp_path)
    # Batch size 1: batched and single images differ by rounding (~1e-6, sometimes 1/255 in a PNG), and a
    # resumed column is batched differently, so "identical" is checked where it can hold bit for bit.
    study = write_study(tmp_path, "resume", characters, batch_size=1)
    reference = run_cli("run", str(study), "--out", str(tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = done_images(tmp_path / "uninterrupted")
    total = len(expected)
    assert total == 9

    out = tmp_path / "killed"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_PAUSE_HOOK)
    args = ("run", str(study), "--out", str(out))

    # 1. Killed after the plan was registered, before any cell was finished.
    kill_when(start_cli(*args), lambda: db_counts(out).get("pending", 0) == total)
    assert db_counts(out).get("done", 0) < total

    # 2. Killed after three cells were done.
    kill_when(start_cli(*args), lambda: db_counts(out).get("done", 0) >= 3)
    after_two = db_counts(out)
    assert 3 <= after_two.get("done", 0) < total

    # 3. Killed mid-write: the PNG is complete in its temp file but not yet renamed into place.
    marker = tmp_path / "paused-before-rename"
    env = cli_env(PYTHONPATH=str(hooks), EG_TEST_PAUSE_PHASE="before", EG_TEST_PAUSE_AT="2",
                  EG_TEST_PAUSE_MARKER=str(marker))
    kill_when(start_cli(*args, env=env), marker.exists)
    assert Path(marker.read_text()).exists(), "the temp file of the interrupted write should be left behind"

    # 4. Killed between the rename and the database update: a PNG on disk that the store does not count.
    marker = tmp_path / "paused-after-rename"
    env = cli_env(PYTHONPATH=str(hooks), EG_TEST_PAUSE_PHASE="after", EG_TEST_PAUSE_AT="1",
                  EG_TEST_PAUSE_MARKER=str(marker))
    kill_when(start_cli(*args, env=env), marker.exists)
    orphan = Path(marker.read_text())
    assert orphan.exists()
    assert {c["file"] for c in cells(out) if c["status"] == "done"}.isdisjoint({str(orphan.relative_to(out))})

    # 5. A "done" PNG cut short (what a crash on a file system without atomic renames leaves).
    done_file = out / next(c["file"] for c in cells(out) if c["status"] == "done")
    done_file.write_bytes(done_file.read_bytes()[: done_file.stat().st_size // 2])
    assert db_counts(out).get("done", 0) < total

    final = run_cli(*args)
    assert final.returncode == 0, final.stderr[-2000:]

    rows = cells(out)
    assert len(rows) == total and {r["status"] for r in rows} == {"done"}
    assert len({r["key"] for r in rows}) == total
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*") if p.is_file())
    assert on_disk == sorted(r["file"] for r in rows), "every cell exactly once, no temp files or strays"
    got = done_images(out)  # every PNG opens and passes PIL's verify()
    assert got.keys() == expected.keys()
    for key, pixels in expected.items():
        assert np.array_equal(got[key], pixels), f"cell {key} differs from the uninterrupted run"
    grid = open_verified(out / "grids" / "resume.png")
    assert np.array_equal(grid, open_verified(tmp_path / "uninterrupted" / "grids" / "resume.png"))
    log = (out / "run.log").read_text()
    assert log.count("run started:") == 5  # every attempt is in the one log
