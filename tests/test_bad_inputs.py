"""Bad input through the CLI: every case is a one-line error with the right exit code, never a traceback,
and the output folder of an earlier finished run is left exactly as it was.

Each case writes a study (or other files) into its own folder and runs one command in-process. Most are
refused before any model loads (`--dry-run` included), so the whole table runs in seconds after the
finished run every case starts from has been made once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from expressiongrid.cli import main

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

BASE = {
    "name": "bad",
    "model": {"source": "tiny"},
    "sampling": {"steps": 2, "width": 64, "height": 64, "seed": 1},
    "prompt": {"positive": "a photo of a woman, {expression}"},
    "rows": {"axis": "expressions", "values": ["neutral", "smiling"]},
    "columns": {"axis": "CFG Scale", "values": "5,7"},
}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(data: dict) -> str:
    """A study dict as TOML: scalars first, then one [table] per dict (enough for study files)."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def study_with(path: str | None = None, value=None, *, drop: str | None = None, **changes) -> dict:
    """BASE with ``path`` ("sampling.steps") set to ``value`` (a missing table is created), ``drop`` removed
    and each keyword's table replaced."""
    data = copy.deepcopy(BASE)
    if path is not None:
        *tables, key = path.split(".")
        target = data
        for t in tables:
            target = target.setdefault(t, {})
        target[key] = value
    if drop:
        *tables, key = drop.split(".")
        target = data
        for t in tables:
            target = target[t]
        del target[key]
    data.update(changes)  # whole tables replaced
    return data


# -- hostile files -------------------------------------------------------------------------------------


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def lora_entry(**over) -> dict:
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    entry.update(over)
    return {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": entry}


def pickle_memo_bomb() -> bytes:
    """A protocol-2 pickle that builds a list of a list of ... through the memo: tiny file, huge object."""
    ops = [b"\x80\x02", b"]", b"q\x00"]  # PROTO 2, EMPTY_LIST, BINPUT 0
    for _ in range(60):
        ops += [b"(", b"h\x00", b"h\x00", b"h\x00", b"h\x00", b"l", b"q\x00"]  # MARK, 4x BINGET 0, LIST, BINPUT 0
    ops.append(b".")
    return b"".join(ops)


def zip_bomb(path: Path) -> None:
    """A torch-style .pt zip whose one member claims to hold far more than the file."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (64 * 1024 * 1024))  # deflates to ~64 KB


# -- the table ----------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    exit_code: int
    message: str  # a fragment the error must contain (case-insensitive)
    study: dict | None = None  # written as s.toml
    raw: bytes | None = None  # or these bytes as s.toml
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # name -> writer(path)
    args: list[str] | None = None  # default: run s.toml --dry-run --out OUT
    extra: list[str] = field(default_factory=list)  # added to the default args
    out_setup: Callable[[Path], None] | None = None  # damages the copied finished run folder first


C = Case
CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


def chars_study(*files: str) -> dict:
    return study_with(columns={"axis": "characters", "files": list(files)},
                      prompt={"positive": "a photo of {character}, {expression}"})


# Study files that are not text, not files, or too big.
add(
    C("study-latin-1", 2, "not UTF-8 text", raw=to_toml(BASE).replace("woman", "femme café").encode("latin-1")),
    C("study-random-bytes", 2, "not UTF-8 text", raw=bytes(range(256)) * 4),
    C("study-utf16", 2, "not UTF-8 text", raw=to_toml(BASE).encode("utf-16")),
    C("study-nul-bytes", 2, "not valid TOML", raw=b"name = \"a\x00b\"\n"),
    C("study-invalid-toml", 2, "not valid TOML", raw=b"[sampling\nsteps = 2\n"),
    C("study-empty", 2, "prompt.positive: missing", raw=b""),
    C("study-too-big", 2, "larger than 4 MiB", raw=b"# " + b"x" * (4 * 1024 * 1024 + 10) + b"\n"),
    C("study-missing", 2, "study file not found", args=["run", "{dir}/nope.toml", "--dry-run", "--out", "{out}"]),
    C("study-dev-zero", 2, "not a regular file", args=["run", "/dev/zero", "--dry-run", "--out", "{out}"]),
    C("study-fifo", 2, "not a regular file", files={"fifo.toml": lambda p: os.mkfifo(p)},
      args=["run", "{dir}/fifo.toml", "--dry-run", "--out", "{out}"]),
)

# Every key with a value of the wrong type or out of range.
WRONG = [
    ("name", 5, "name: expected a string"), ("title", ["x"], "title: expected a string"),
    ("model", 5, "model: expected a table"), ("model.source", 5, "model.source: expected"),
    ("model.source", "  ", "model.source: expected"), ("model.vae", 5, "model.vae: expected a string"),
    ("model.clip_skip", "2", "model.clip_skip: expected an integer"), ("model.clip_skip", 99, "1 to 12"),
    ("model.dtype", "fp64", "model.dtype: expected"), ("model.device", 5, "model.device: expected a string"),
    ("sampling", [1], "sampling: expected a table"), ("sampling.sampler", 5, "sampling.sampler: expected a string"),
    ("sampling.sampler", "Warp drive", "sampler"), ("sampling.steps", "20", "sampling.steps: expected"),
    ("sampling.steps", 0, "from 1 to 1000"), ("sampling.steps", 10**6, "from 1 to 1000"),
    ("sampling.steps", 2.5, "sampling.steps: expected"), ("sampling.steps", True, "sampling.steps: expected"),
    ("sampling.cfg_scale", "7", "sampling.cfg_scale: expected"), ("sampling.cfg_scale", float("nan"), "0 to 100"),
    ("sampling.cfg_scale", float("inf"), "0 to 100"), ("sampling.cfg_scale", -1, "0 to 100"),
    ("sampling.width", 65, "multiple of 8"), ("sampling.width", 0, "multiple of 8"),
    ("sampling.width", 10**6, "multiple of 8"), ("sampling.height", "64", "sampling.height: expected"),
    ("sampling.seed", -5, "sampling.seed: expected"), ("sampling.seed", 2**64, "sampling.seed: expected"),
    ("sampling.seed", "1", "sampling.seed: expected"), ("sampling.seed_policy", "random", "seed_policy"),
    ("sampling.vary", 5, "sampling.vary: expected"), ("sampling.vary", ["sideways"], "sampling.vary: expected"),
    ("sampling.seeds_per_cell", 0, "seeds_per_cell"), ("sampling.seeds_per_cell", 1000, "seeds_per_cell"),
    ("sampling.noise_source", "tpu", "noise_source"), ("sampling.batch_size", 0, "batch_size"),
    ("sampling.batch_size", "4", "batch_size"), ("sampling.warp", 9, "sampling.warp: unknown key"),
    ("prompt", "hi", "prompt: expected a table"), ("prompt.positive", 5, "prompt.positive: expected a string"),
    ("prompt.negative", [], "prompt.negative: expected a string"), ("prompt.reference", 5, "prompt.reference"),
    ("rows", 5, "rows: expected a table"), ("rows.axis", 5, "rows.axis: expected a string"),
    ("rows.axis", "Width", "unknown axis"), ("rows.values", 5, "rows"),
    ("columns.values", {"a": 1}, "columns.values: expected value text or a list"),
    ("output", 5, "output: expected a table"), ("output.dir", 5, "output.dir: expected a string"),
    ("output.grid_formats", "gif", "grid_formats"), ("output.upload_copy", "png", "upload_copy"),
    ("output.margin", -1, "output.margin"), ("output.margin", 10**6, "output.margin"),
    ("output.max_cells_per_page", 0, "max_cells_per_page"), ("wibble", 1, "wibble: unknown key"),
]
add(*(C(f"key-{path}={json.dumps(value, default=str)[:20]}", 2, message, study=study_with(path, value))
      for path, value, message in WRONG))
add(
    C("columns-files-5", 2, "columns.files: expected a list", study=study_with(
        columns={"axis": "characters", "files": 5}, prompt={"positive": "{character} {expression}"})),
    C("columns-reference-yes", 2, "columns.reference", study=study_with(
        columns={"axis": "characters", "reference": "yes"}, prompt={"positive": "{character} {expression}"})),
    C("pages-bad-axis", 2, "pages.axis", study=study_with(pages={"axis": "Flux capacitor", "values": "1"})),
    C("same-axis-twice", 2, "already the", study=study_with(rows={"axis": "CFG Scale", "values": "3"})),
    C("unknown-placeholder", 2, "unknown placeholder", study=study_with("prompt.positive", "{expression} {mood}")),
)

# Axis values that cannot be made (refused with the study, not as failed cells after the model loaded).
AXIS = [
    ("Steps", "0,5", "Steps axis: 0 out of range"), ("Steps", "1000000", "Steps axis: 1000000 out of range"),
    ("Seed", "18446744073709551616", "Seed axis"), ("Seed", "-5", "Seed axis: -5"),
    ("Clip skip", "99", "Clip skip axis: 99"), ("Size", "100000x100000", "Size axis"),
    ("Size", "64x65", "Size axis"), ("CFG Scale", "nan", "CFG Scale axis: nan"),
    ("CFG Scale", "1e400", "CFG Scale axis: inf"), ("LoRA weight", "nan", "LoRA weight axis"),
    ("LoRA weight", "1e30", "LoRA weight axis"), ("Seed", "1-1000000000", "at most 100,000"),
    ("CFG Scale", "1-1000000 (+0.001)", "at most 100,000"), ("Steps", "1-10 [1000000]", "at most 100,000"),
    ("Sampler", "Warp drive", "unknown sampler"), ("Steps", "ten", "not a whole number"),
    ("Checkpoint name", "missing.safetensors", "file not found"),
]
add(*(C(f"axis-{kind}={values}"[:60], 2, message, study=study_with(columns={"axis": kind, "values": values}))
      for kind, values, message in AXIS))

# Prompts A1111 would stop on, or beyond the limits.
PROMPTS = [
    ("lora-nan", "a <lora:x:nan> {expression}", "is not a number"),
    ("lora-1e30", "a <lora:x:1e30> {expression}", "beyond"),
    ("weight-1.2.3", "a (cat:1.2.3) {expression}", "not a number"),
    ("weight-infinite", "a (cat:" + "9" * 400 + ") {expression}", "too large"),
    ("nesting-200", "(" * 200 + "a {expression}", "more than 100 brackets"),
    ("prompt-20000-chars", "x " * 10_000 + "{expression}", "at most 10,000"),
]
add(*(C(f"prompt-{name}", 2, message, study=study_with("prompt.positive", text)) for name, text, message in PROMPTS))
add(
    C("negative-too-long", 2, "prompt.negative", study=study_with("prompt.negative", "y" * 10_001)),
    C("expression-text-error", 2, "expression", study=study_with("rows.values", ["neutral", "(smile:1.2.3)"])),
    C("prompt-sr-value-error", 2, "Prompt S/R value", study=study_with(
        columns={"axis": "Prompt S/R", "values": "woman, (man:1.2.3)"})),
    C("million-cells", 2, "1,000,000 cells", study=study_with(
        "rows.values", [f"e{i}" for i in range(1000)], columns={"axis": "CFG Scale", "values": "1-1000"})),
    C("seeds-times-cells", 2, "a study may have at most", study=study_with(
        "rows.values", [f"e{i}" for i in range(1000)], columns={"axis": "CFG Scale", "values": "1-10 [3]"},
        sampling={**BASE["sampling"], "seed_policy": "per-cell", "seeds_per_cell": 64})),
)

# Model files that are not checkpoints.
add(
    C("model-garbage-safetensors", 2, "not a valid safetensors file", study=study_with("model.source", "m.safetensors"),
      files={"m.safetensors": lambda p: p.write_bytes(os.urandom(4096))}),
    C("model-garbage-ckpt", 2, "not a PyTorch checkpoint", study=study_with("model.source", "m.ckpt"),
      files={"m.ckpt": lambda p: p.write_bytes(b"hello" * 1000)}),
    C("model-lora-as-checkpoint", 2, "not a Stable Diffusion checkpoint", study=study_with("model.source", "m.safetensors"),
      files={"m.safetensors": lambda p: p.write_bytes(safetensors_bytes(lora_entry(), b"\0" * 8))}),
    C("model-sdxl", 2, "SDXL", study=study_with("model.source", "m.safetensors"), files={
        "m.safetensors": lambda p: p.write_bytes(safetensors_bytes(
            {"conditioner.embedders.0.x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8))}),
    C("model-missing", 2, "file not found", study=study_with("model.source", "nope.safetensors")),
    C("model-wrong-suffix", 2, "unsupported checkpoint type", study=study_with("model.source", "m.bin"),
      files={"m.bin": lambda p: p.write_bytes(b"x")}),
)

# Character files with damaged or hostile content: with --strict the study is refused and names the file.
HOSTILE = {
    "string-offsets": safetensors_bytes(lora_entry(data_offsets=["0", "8"]), b"\0" * 8),
    "metadata-list": safetensors_bytes({"__metadata__": ["a"], **lora_entry()}, b"\0" * 8),
    "metadata-numbers": safetensors_bytes({"__metadata__": {"ss_network_dim": 4}, **lora_entry()}, b"\0" * 8),
    "nested-shape": safetensors_bytes(lora_entry(shape=[[2]]), b"\0" * 8),
    "shape-lies": safetensors_bytes(lora_entry(shape=[1000, 1000]), b"\0" * 8),
    "negative-shape": safetensors_bytes(lora_entry(shape=[-2]), b"\0" * 8),
    "unknown-dtype": safetensors_bytes(lora_entry(dtype="F128"), b"\0" * 8),
    "header-not-object": safetensors_bytes([1, 2, 3]),  # type: ignore[arg-type]
    "header-too-long": struct.pack("<Q", 2**40) + b"{}",
    "truncated": safetensors_bytes(lora_entry(data_offsets=[0, 4096]), b"\0" * 8),
    "empty": b"",
}
add(*(C(f"character-{name}", 2, f"c.safetensors", study=chars_study("c.safetensors"), extra=["--strict"],
        files={"c.safetensors": (lambda data: lambda p: p.write_bytes(data))(data)}) for name, data in HOSTILE.items()))
add(
    C("character-pickle-memo-bomb", 2, "e.pt", study=chars_study("e.pt"), extra=["--strict"],
      files={"e.pt": lambda p: p.write_bytes(pickle_memo_bomb())}),
    C("character-zip-bomb", 2, "e.pt", study=chars_study("e.pt"), extra=["--strict"], files={"e.pt": zip_bomb}),
    C("character-toml-not-utf8", 2, "not UTF-8", study=chars_study("c.toml"), extra=["--strict"],
      files={"c.toml": lambda p: p.write_bytes(b'label = "caf\xe9"\n')}),
    C("character-toml-fifo", 2, "not a regular file", study=chars_study("c.toml"), extra=["--strict"],
      files={"c.toml": lambda p: os.mkfifo(p)}),
    C("character-toml-is-a-folder", 2, "c.toml: is a folder", study=chars_study("c.toml"), extra=["--strict"],
      files={"c.toml": lambda p: p.mkdir()}),
    C("expression-set-is-a-folder", 2, "rows.toml: is a folder", args=["expressions", "list", "{dir}/rows.toml"],
      files={"rows.toml": lambda p: p.mkdir()}),
    C("character-weight-nan", 2, "weight must be a number from -100 to 100, got nan", study=chars_study("c.toml"),
      extra=["--strict"], files={"c.toml": lambda p: p.write_text('[[lora]]\nfile = "x.safetensors"\nweight = nan\n')}),
    C("character-weight-huge", 2, "te_weight must be a number from -100", study=chars_study("c.toml"),
      extra=["--strict"], files={"c.toml": lambda p: p.write_text('[[lora]]\nfile = "x.safetensors"\nte_weight = 1e30\n')}),
    C("character-label-empty", 2, "label must be a non-empty string", study=chars_study("c.toml"), extra=["--strict"],
      files={"c.toml": lambda p: p.write_text('label = " "\ntext = "x"\n')}),
    C("character-model-is-a-folder", 2, "c.safetensors: is a folder", study=chars_study("c.safetensors"),
      extra=["--strict"], files={"c.safetensors": lambda p: p.mkdir()}),
    C("character-missing", 2, "character file not found", study=chars_study("nope.toml")),
    C("character-unsupported-type", 2, "c.txt", study=chars_study("c.txt"), extra=["--strict"],
      files={"c.txt": lambda p: p.write_text("hello")}),
)

# Output folders a run cannot use, and other flags.
add(
    C("out-is-a-file", 2, "is a file", args=["run", "{study}", "--dry-run", "--out", "{dir}/f"],
      study=BASE, files={"f": lambda p: p.write_text("x")}),
    C("out-under-a-file", 2, "is a file", args=["run", "{study}", "--dry-run", "--out", "{dir}/f/sub"],
      study=BASE, files={"f": lambda p: p.write_text("x")}),
    C("out-name-too-long", 2, "choose a shorter --out", args=["run", "{study}", "--dry-run", "--out",
                                                             "{dir}/" + "x" * 300], study=BASE),
    C("notify-bad-port", 2, "port outside 1-65535", study=BASE, extra=["--notify", "http://127.0.0.1:99999/"]),
    C("notify-ftp", 2, "http:// or https://", study=BASE, extra=["--notify", "ftp://example.com/x"]),
    C("notify-no-host", 2, "with a host", study=BASE, extra=["--notify", "http://user:pw@/x"]),
    C("batch-size-0", 2, "batch-size", study=BASE, extra=["--batch-size", "0"]),
    C("xyz-steps-axis-0", 2, "Steps axis: 0", args=["xyz", "--prompt", "a cat", "--x", "Steps: 0,1", "--dry-run",
                                                   "--out", "{out}"]),
    C("xyz-no-colon", 2, "--x", args=["xyz", "--prompt", "a cat", "--x", "Steps 10", "--dry-run", "--out", "{out}"]),
    C("fetch-hf-unreachable", 1, "hf:someone/some-lora/x.safetensors",
      args=["characters", "fetch", "hf:someone/some-lora/x.safetensors", "--dir", "{dir}/fetched"]),
    C("fetch-bad-spec", 1, "use civitai:VERSION_ID", args=["characters", "fetch", "hf:only-a-repo", "--dir",
                                                          "{dir}/fetched"]),
    C("prompt-explain-steps-huge", 2, "1<=x<=1000", args=["prompt", "explain", "[a|b]", "--steps", "99999999999"]),
    C("analyze-grid-not-an-image", 2, "g.png: cannot read the image", args=["analyze", "{dir}/g.png"],
      files={"g.png": lambda p: p.write_bytes(b"not a png")}),
    C("analyze-folder-with-a-broken-image", 2, "b.png: cannot read the image", args=["analyze", "{dir}/imgs"],
      files={"imgs": lambda p: (p.mkdir(), (p / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"))}),
    C("import-text-too-big", 2, "larger than 4 MiB", args=["import", "{dir}/p.txt", "--out", "{dir}/s2.toml"],
      files={"p.txt": lambda p: p.write_text("a, " * 2_000_000 + "\nSteps: 20, Sampler: Euler, Seed: 1\n")}),
    C("import-fifo", 2, "not a regular file", args=["import", "{dir}/p.txt", "--out", "{dir}/s2.toml"],
      files={"p.txt": lambda p: os.mkfifo(p)}),
    C("xyz-prompt-too-long", 2, "at most 10,000", args=["xyz", "--prompt", "a" * 10_001, "--x", "Steps: 1",
                                                        "--dry-run", "--out", "{out}"]),
)


def _sql(*statements: str) -> Callable[[Path], None]:
    def damage(out: Path) -> None:
        import sqlite3

        with sqlite3.connect(out / "run.sqlite") as db:
            for statement in statements:
                db.execute(statement)
        db.close()

    return damage


def _replace_db(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(out: Path) -> None:
        (out / "run.sqlite").unlink()
        make(out / "run.sqlite")

    return damage


def _foreign_db(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cells (x)")
    db.close()


# A run folder whose run.sqlite is not one this version can use: refused by name, for a dry run and a run,
# also for a seed = -1 study (which reads the earlier run's random seed from it).
RANDOM_SEED = {**BASE, "sampling": {**BASE["sampling"], "seed": -1}}
for mode, (seed, study) in itertools.product(("dry-run", "run"), (("", BASE), ("-random-seed", RANDOM_SEED))):
    flags = ["--dry-run"] if mode == "dry-run" else []
    args = ["run", "{study}", "--out", "{out}"]
    add(
        C(f"db-garbage-{mode}{seed}", 1, "file is not a database", study=study, args=args,
          extra=flags, out_setup=_replace_db(lambda p: p.write_bytes(bytes(range(256)) * 16))),
        C(f"db-other-program-{mode}{seed}", 1, "not made by expressiongrid", study=study,
          args=args, extra=flags, out_setup=_replace_db(_foreign_db)),
        C(f"db-missing-column-{mode}{seed}", 1, "lacks column(s) page", study=study, args=args,
          extra=flags, out_setup=_sql("ALTER TABLE cells DROP COLUMN page")),
        C(f"db-future-version-{mode}{seed}", 1, "newer expressiongrid", study=study, args=args,
          extra=flags, out_setup=_sql("UPDATE schema_versions SET version = 99 WHERE component = 'core'")),
        C(f"db-is-a-folder-{mode}{seed}", 2, "run.sqlite is not a file", study=study, args=args,
          extra=flags, out_setup=_replace_db(lambda p: p.mkdir())),
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The output folder of a finished run of BASE (4 cells): every case starts from a copy of it."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "s.toml").write_text(to_toml(BASE), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(folder / "s.toml"), "--out", str(folder / "out")],
                                env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output
    return folder / "out"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's hash; run.log only by what it held (a refused run may add its own lines)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.log"}


def log_text(folder: Path) -> str:
    return (folder / "run.log").read_text(encoding="utf-8") if (folder / "run.log").exists() else ""


def assert_clean_error(result, exit_code: int, message: str) -> None:
    """Exit code, no traceback, and one `error:` line (plus one line per listed problem)."""
    stderr = result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == exit_code, (result.exit_code, stderr[-2000:])
    assert "Traceback" not in stderr + result.stdout
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error: ", "Error: "))]
    assert len(errors) == 1, lines
    others = [line for line in lines if line not in errors and not line.startswith(("  - ", "Usage:", "Try '"))]
    assert others == [], others
    assert message.lower() in stderr.lower(), stderr[-2000:]


def test_the_table_has_at_least_80_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 80


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, tmp_path, finished_run):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    if case.out_setup is not None:
        case.out_setup(out)
    before, log_before = snapshot(out), log_text(out)
    study = tmp_path / "s.toml"
    if case.raw is not None:
        study.write_bytes(case.raw)
    elif case.study is not None:
        study.write_text(to_toml(case.study), encoding="utf-8")
    for name, write in case.files.items():
        write(tmp_path / name)
    args = case.args or ["run", "{study}", "--dry-run", "--out", "{out}"]
    args = [a.format(study=study, out=out, dir=tmp_path) for a in args] + case.extra
    result = CliRunner().invoke(main, args, env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert_clean_error(result, case.exit_code, case.message)
    assert snapshot(out) == before
    assert log_text(out).startswith(log_before)


def test_character_files_in_a_folder_with_glob_brackets_are_found(tmp_path):
    """civitai downloads often sit in folders such as "Anna [SD1.5]": a named file there, a pattern inside
    it, and a study whose own folder has brackets all find the file instead of 'no files match'."""
    from expressiongrid.study.study import load_study

    folder = tmp_path / "study [x]" / "Anna [SD1.5]"
    folder.mkdir(parents=True)
    (folder / "anna.toml").write_text('label = "Anna"\ntext = "annachar"\n', encoding="utf-8")
    for files in (["Anna [SD1.5]/anna.toml"], ["Anna [SD1.5]/*.toml"]):
        study = tmp_path / "study [x]" / "s.toml"
        study.write_text(to_toml(chars_study(*files)), encoding="utf-8")
        labels = [v.label for v in load_study(study).columns.values]
        assert labels == ["Anna"], (files, labels)
