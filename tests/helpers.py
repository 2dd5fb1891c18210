"""Helpers shared by several test modules (test modules do not import each other)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from expressiongrid.analysis import validation
from expressiongrid.output.images import save_png
from expressiongrid.store import CellRecord, Store, cell_file_for


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


def accelerate_command(num_processes: int, port: int) -> list[str]:
    """`accelerate launch` for N local processes with every setting given, so no config file is read.

    `--cpu --num_processes N` starts a single process in accelerate 1.x (multi-CPU needs MPI), so on a
    machine without GPUs we use the multi-GPU launcher (torchrun underneath); our `current_process()`
    then forms a gloo group on the CPU. On a machine with GPUs the same command uses one GPU each.
    """
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [exe, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            "--num_cpu_threads_per_process", "1"]


def accelerate_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HOME"] = str(tmp_path / "hf")  # no user accelerate config is picked up
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), so that no outgoing connection made by another
    program in the seconds before torchrun binds it can take it in the meantime."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


SIDE = 256


def _small(image):
    scale = SIDE / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)))


def face_columns():
    astro = validation.expression_variants(_small(validation.astronaut()))
    grace = validation.expression_variants(_small(validation.grace_hopper()))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))
    return {
        "reference": ("Reference", astro),
        "hopper": ("Hopper", grace),
        "stiff": ("Stiff", {k: grace["neutral"] for k in grace}),
        "swap": ("Swap", {"neutral": grace["neutral"], **{k: v for k, v in astro.items() if k != "neutral"}}),
        "noface": ("No face", {k: noise for k in grace}),
    }


ROWS = [("neutral", "neutral face expression"), ("smile", "smiling, closed mouth"), ("angry", "angry")]


COLS = [("reference", "Reference"), ("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")]


def make_run(run_dir: Path, rows=ROWS, cols=COLS, failed: set[tuple[str, str]] = frozenset()) -> Store:
    """A finished run folder with one small PNG per cell, written through the real Store."""
    store = Store(run_dir)
    cells = []
    for ci, (col_id, col_label) in enumerate(cols):
        for ri, (row_id, row_label) in enumerate(rows):
            key = f"{ri:x}{ci:x}" + format(abs(hash((row_id, col_id))) % 16**30, "030x")
            cells.append(CellRecord(
                key=key, run_id=None, page=0, row_index=ri, col_index=ci, row_id=row_id, row_label=row_label,
                col_id=col_id, col_label=col_label, character_id=None if col_id == "reference" else col_id,
                prompt=f"closeup, {row_label}, {col_id}", negative_prompt="", seed=1, steps=4, sampler="Euler",
                cfg_scale=7.0, width=64, height=64, spec={"row": row_id, "col": col_id},
            ))
    study_info = {"rows": [{"id": r, "label": lbl} for r, lbl in rows],
                  "columns": [{"id": c, "label": lbl} for c, lbl in cols]}
    run_id = store.begin_run(study_info, cells)
    for cell in cells:
        if (cell.row_id, cell.col_id) in failed:
            store.mark_failed(cell.key, "NaN image", run_id=run_id)
            continue
        rel = cell_file_for(cell.key)
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = (40 * cell.row_index % 256, 60 * cell.col_index % 256, 128)
        Image.new("RGB", (64, 64), colour).save(path)
        store.mark_done(cell.key, file=rel, parameters="x", seconds=0.1, run_id=run_id)
    return store


def cell_key(store: Store, row_id: str, col_id: str) -> str:
    return next(c.key for c in store.cells() if c.row_id == row_id and c.col_id == col_id)


EVIL_LABEL = "<script>alert('x')</script>"


BOLD_LABEL = "Hopper <b>bold</b> & co"


def labelled_columns():
    cols = face_columns()
    cols["hopper"] = (BOLD_LABEL, cols["hopper"][1])
    cols["noface"] = (EVIL_LABEL, cols["noface"][1])
    return cols


def add_grids(run_dir, count: int):
    """Grid images as the runner writes them: PNG with A1111 parameters naming the grid."""
    rng = np.random.default_rng(3)
    for i in range(count):
        pixels = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        save_png(run_dir / "grids" / f"validation-{i:02d}.png", Image.fromarray(pixels),
                 f"grid {i} of the validation run\nSteps: 4, Sampler: Euler, CFG scale: 7.0, Seed: 7, Size: 256x256")
