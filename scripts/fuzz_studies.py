#!/usr/bin/env python
"""Fuzz study files: mutants of valid studies through `expressiongrid run --dry-run`, in-process.

Each mutant starts from one of a few valid studies (A1111 axes, expression and character axes, pages,
per-cell seeds) and is damaged either as data (a value replaced by one of another type or an extreme
number, a key dropped, renamed or added, a table turned into a list) or as text (bytes flipped, deleted or
inserted, lines duplicated or dropped, the file cut short, re-encoded). The command must either plan the
study (exit 0) or refuse it with one `error:` line and exit 2 (1 for a broken run folder); a Python
exception reaching the CLI (a traceback) is a failure, and so is a mutant that takes over
``--max-seconds`` of CPU time. Deterministic for a given ``--seed``.

    python scripts/fuzz_studies.py --count 10000 --seed 1

Prints a JSON summary (count, exit codes seen, failures with examples); exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

SEEDS: list[dict] = [
    {
        "name": "fuzz",
        "model": {"source": "tiny", "clip_skip": 1},
        "sampling": {"sampler": "Euler a", "steps": 4, "cfg_scale": 7.0, "width": 64, "height": 64, "seed": 1},
        "prompt": {"positive": "closeup of woman, [hair: {expression}: 0.2], RAW photo", "negative": "cartoon"},
        "rows": {"axis": "expressions", "values": ["neutral", "smiling", "angry"]},
        "columns": {"axis": "CFG Scale", "values": "5,7"},
    },
    {
        "name": "pages",
        "sampling": {"steps": 3, "width": 64, "height": 64, "seed": -1, "seed_policy": "vary", "vary": ["rows"]},
        "prompt": {"positive": "a photo of {expression}"},
        "rows": {"axis": "expressions", "set": "seed-study"},
        "columns": {"axis": "Steps", "values": "2-4"},
        "pages": {"axis": "Sampler", "values": "Euler a, DPM++ 2M"},
        "output": {"grid_formats": ["png", "jpeg"], "margin": 4},
    },
    {
        "name": "characters",
        "sampling": {"steps": 2, "width": 64, "height": 64, "seed": 3, "seed_policy": "per-cell", "seeds_per_cell": 2},
        "prompt": {"positive": "{character}, {expression}", "reference": "1girl"},
        "rows": {"axis": "expressions", "items": [{"id": "a", "prompt": "smiling"}, {"id": "b", "prompt": "(sad:1.2)"}]},
        "columns": {"axis": "characters", "reference": True, "files": []},
    },
    {
        "name": "sr",
        "sampling": {"steps": 2, "width": 64, "height": 64, "seed": 5},
        "prompt": {"positive": "a cat [on a mat:in a hat:0.5] {expression}"},
        "rows": {"axis": "Prompt S/R", "values": "cat, dog, \"bird, small\""},
        "columns": {"axis": "Size", "values": "64x64, 64x96"},
    },
]

ODD_VALUES = [
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**6, 0.5, -0.0, float("nan"), float("inf"), 1e308, "",
    " ", "x" * 5000, "\x1b[31mred", "\u202e", "../../etc/passwd", "{expression}", "{nope}", "[a:b:1e400]",
    "(" * 150, "<lora:x:nan>", "1-1000000000", "nan", "64x64", "Euler a", [], [1, "a", None], [[[]]], {}, {"a": {"b": 1}},
    "日本語", "\x00", "🙂" * 100, "5,7", "-5", "1e400",
]


def toml_value(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else "-inf" if value == float("-inf")
                                             else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        items = [toml_value(v) for v in value]
        return "[" + ", ".join(i for i in items if i is not None) + "]"
    if isinstance(value, dict):
        items = [(k, toml_value(v)) for k, v in value.items()]
        return "{" + ", ".join(f"{json.dumps(k)} = {v}" for k, v in items if v is not None) + "}"
    raise TypeError(value)


def to_toml(data: dict) -> str:
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict) and toml_value(value) is not None:
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if toml_value(v) is not None)
    return "\n".join(lines) + "\n"


def _paths(data, prefix=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def mutate_data(rng: random.Random, data: dict) -> dict:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(data))
        if not paths:
            break
        path = rng.choice(paths)
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        op = rng.random()
        if op < 0.55:
            parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif op < 0.7 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.8 and isinstance(parent, dict):
            parent[rng.choice(["axis", "values", "files", "set", "items", "only", "zzz", "seed", "steps"])] = \
                copy.deepcopy(rng.choice(ODD_VALUES))
        elif op < 0.9 and isinstance(parent[key], dict):
            parent[key] = [parent[key]]
        else:
            parent[key] = copy.deepcopy(parent[rng.choice(list(parent.keys()) if isinstance(parent, dict)
                                                          else range(len(parent)))])
    return data


def mutate_text(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.encode("utf-8"))
    op = rng.random()
    if op < 0.2 and data:
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op < 0.4 and data:
        i = rng.randrange(len(data))
        del data[i : i + rng.randint(1, 20)]
    elif op < 0.55:
        i = rng.randrange(len(data) + 1)
        data[i:i] = rng.choice([b"[", b"]", b"=", b'"', b"\n", b"[[rows]]\n", b"\\u00", b"'''", b"#", b"\x00",
                                b"\xff\xfe", "é".encode(), b"{", b"}"])
    elif op < 0.7:
        lines = data.split(b"\n")
        i = rng.randrange(len(lines))
        if rng.random() < 0.5:
            lines.insert(i, lines[i])
        else:
            del lines[i]
        data = bytearray(b"\n".join(lines))
    elif op < 0.85:
        data = data[: rng.randrange(len(data) + 1)]
    else:
        return text.encode(rng.choice(["utf-16", "latin-1", "utf-8-sig", "cp1252"]), errors="replace")
    return bytes(data)


def run_mutant(runner, main, folder: Path, content: bytes) -> tuple[int, str, BaseException | None]:
    study = folder / "s.toml"
    study.write_bytes(content)
    result = runner.invoke(main, ["run", str(study), "--dry-run", "--out", str(folder / "out")],
                           env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    exc = result.exception if result.exception is not None and not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stderr, exc


def fuzz(count: int, seed: int, max_seconds: float = 10.0, progress_every: int = 0) -> dict:
    """Run ``count`` mutants; the summary lists failures (tracebacks, bad exits, slow mutants) by kind."""
    from click.testing import CliRunner

    from expressiongrid.cli import main

    rng = random.Random(seed)
    runner = CliRunner()
    failures: dict[str, list[str]] = {}
    exits: dict[str, int] = {}
    slowest = 0.0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-studies-") as tmp:
        folder = Path(tmp)
        for i in range(count):
            base = rng.choice(SEEDS)
            as_text = rng.random() < 0.35
            content = mutate_text(rng, to_toml(base)) if as_text else to_toml(mutate_data(rng, base)).encode("utf-8")
            t0 = time.process_time()  # CPU time: the machine's other work does not count against a mutant
            code, stderr, exc = run_mutant(runner, main, folder, content)
            seconds = time.process_time() - t0
            slowest = max(slowest, seconds)
            exits[str(code)] = exits.get(str(code), 0) + 1
            problem = None
            if exc is not None:
                problem = f"traceback: {type(exc).__name__}: {exc}".splitlines()[0][:200]
                if not failures:
                    traceback.print_exception(exc, file=sys.stderr)
            elif code not in (0, 1, 2):
                problem = f"exit code {code}"
            elif code != 0 and not any(line.startswith(("error: ", "Error: ")) for line in stderr.splitlines()):
                problem = f"exit {code} without an error line"
            elif seconds > max_seconds:
                problem = f"slower than {max_seconds} s"
            if problem:
                examples = failures.setdefault(problem, [])
                if len(examples) < 3:
                    examples.append(content.decode("utf-8", errors="backslashreplace")[:600])
            if progress_every and (i + 1) % progress_every == 0:
                print(json.dumps({"done": i + 1, "failure_kinds": len(failures), "exits": exits}), file=sys.stderr,
                      flush=True)
    return {"count": count, "seed": seed, "seconds": round(time.perf_counter() - start, 1), "exit_codes": exits,
            "slowest_seconds": round(slowest, 2), "failure_kinds": len(failures), "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--progress-every", type=int, default=0)
    args = parser.parse_args(argv)
    summary = fuzz(args.count, args.seed, args.max_seconds, args.progress_every)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
