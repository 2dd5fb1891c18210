#!/usr/bin/env python
"""Fuzz the prompt language: random prompts built from the grammar's pieces, with random damage.

Numbers come in every magnitude and form (``1e400``, ``-0``, ``nan``, ``inf``, 400-digit integers, ...);
some prompts are nested up to past the nesting limit and some are long, up to the prompt length limit.
Every prompt goes through the whole pure-Python pipeline (tag extraction, AND split, schedules for the base
and hires pass, emphasis parsing of every schedule text, chunking with the SD1.5 vocabulary, ``explain``).
A prompt may be rejected only with ``PromptSyntaxError``, where A1111 rejects it; any other exception, or a
schedule that breaks its invariants, is a failure. Deterministic for a given ``--seed``.

    python scripts/fuzz_prompts.py --count 100000 --seed 1

Prints a JSON summary (count, seconds, failures with the first examples, the slowest prompt's CPU time
and the slowest parse); exit status 1 on any failure or any prompt whose parsing (tags, AND, base and hires
schedules, emphasis of every schedule text) took over ``--max-ms`` of CPU time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback

from expressiongrid.limits import MAX_PROMPT_CHARS

WORDS = [
    "closeup", "woman", "facing viewer", "red hair", "1girl", "RAW photo", "smiling", "日本語", "café", "🙂", "Ωmega",
    "BREAK", "AND", "ANDroid", "BREAKfast", "a=b", "it's", '"quoted"', "x_y", "8k", "#tag", "~", "!", "?", ",", ".",
]
SPACES = [" ", " ", "  ", "\t", "\n", "\u3000", ""]
NUMBERS = ["0", "1", "2", "3", "5", "10", "25", "-1", "+2", "0.2", ".5", "1.", "1.0", "1.5", "0.99", "1e1", "5e-1", "2.0", "00.50"]
SPECIAL_NUMBERS = ["1e400", "-1e400", "1e-400", "1.e400", "-0", "+0", "-0.0", "+0.", "0e0", "1E+99", ".5e3", "nan",
                   "inf", "-inf", "Infinity", "NaN", "1e", "1.2.3", "--1", "+-1", "0x10", "1_000", "٣", "１"]
SPECIALS = ["[", "]", "(", ")", ":", "|", "\\", "<", ">", "\\(", "\\[", "\\]", "\\:", "\\|", "\\\\"]


def random_number(rng: random.Random) -> str:
    """A number of any magnitude and form, valid or not: plain, huge, tiny, signed zero, special words."""
    r = rng.random()
    if r < 0.5:
        return rng.choice(NUMBERS)
    if r < 0.7:
        return rng.choice(SPECIAL_NUMBERS)
    sign = rng.choice(["", "", "-", "+"])
    digits = "".join(rng.choice("0123456789") for _ in range(rng.choice([1, 2, 5, 17, 30, 40, 309, 400])))
    if r < 0.85:
        return sign + digits
    if r < 0.95:
        return f"{sign}{digits[:3]}.{digits[3:]}"
    return f"{sign}{digits[:2]}e{rng.choice(['', '-', '+'])}{rng.randint(0, 10_000)}"


def random_prompt(rng: random.Random, depth: int = 0) -> str:
    """A prompt made of words, constructs (nested up to a few levels) and stray special characters."""
    parts = []
    for _ in range(rng.randint(0, 6 if depth == 0 else 3)):
        r = rng.random()
        if r < 0.35 or depth > 3:
            parts.append(rng.choice(WORDS) + rng.choice(SPACES))
        elif r < 0.5:
            parts.append(f"[{random_prompt(rng, depth + 1)}:{random_prompt(rng, depth + 1)}:{rng.choice(SPACES)}{random_number(rng)}{rng.choice(SPACES)}]")
        elif r < 0.57:
            parts.append(f"[{random_prompt(rng, depth + 1)}:{random_number(rng)}]")
        elif r < 0.67:
            options = [random_prompt(rng, depth + 1) for _ in range(rng.randint(2, 4))]
            parts.append("[" + "|".join(options) + "]")
        elif r < 0.75:
            parts.append(f"({random_prompt(rng, depth + 1)}:{rng.choice([random_number(rng), '1.2.3', '.', 'x'])})")
        elif r < 0.8:
            parts.append(f"({random_prompt(rng, depth + 1)})")
        elif r < 0.84:
            parts.append(f"[{random_prompt(rng, depth + 1)}]")
        elif r < 0.88:
            parts.append(f"<lora:{rng.choice(['x', 'add_detail', 'a b'])}:{random_number(rng)}>")
        elif r < 0.92:
            parts.append(rng.choice([" AND ", " BREAK ", f":{random_number(rng)} AND "]))
        else:
            parts.append(rng.choice(SPECIALS))
    text = "".join(parts)
    if depth == 0 and rng.random() < 0.02:
        # Deep nesting, around the nesting limit (100): brackets of one kind or mixed, closed or not.
        n = rng.choice([20, 99, 100, 101, 150, 500])
        opens = [rng.choice("([") for _ in range(n)] if rng.random() < 0.5 else [rng.choice("([")] * n
        closes = "".join({"(": ")", "[": "]"}[c] for c in reversed(opens)) if rng.random() < 0.7 else ""
        sep = rng.choice(["", ":", "|", "a:", "a|"])
        text = sep.join(opens) + text + closes
    if depth == 0 and rng.random() < 0.01:
        # Long prompts, up to the prompt length limit.
        piece = text or rng.choice(WORDS)
        text = (piece * (rng.randint(1_000, MAX_PROMPT_CHARS) // max(1, len(piece)) + 1))[:MAX_PROMPT_CHARS]
    if depth == 0 and text and rng.random() < 0.3:
        # Damage: delete, duplicate or insert one character, to reach the error paths.
        i = rng.randrange(len(text))
        op = rng.random()
        if op < 0.4:
            text = text[:i] + text[i + 1 :]
        elif op < 0.7:
            text = text[:i] + text[i] + text[i:]
        else:
            text = text[:i] + rng.choice(SPECIALS) + text[i:]
    return text


def check_schedule(schedule, steps: int) -> None:
    ends = [end for end, _ in schedule]
    assert schedule, "empty schedule"
    assert ends == sorted(set(ends)), f"ends not strictly increasing: {ends}"
    assert ends[-1] == steps, f"last end {ends[-1]} != steps {steps}"
    assert ends[0] >= 1, f"first end {ends[0]} < 1"
    assert all(isinstance(text, str) for _, text in schedule)


def run_one(prompt: str, rng: random.Random, tokenizer, with_explain: bool) -> float:
    """Check one prompt; returns the CPU seconds its parsing took (schedules, emphasis, tags, AND)."""
    from expressiongrid.errors import PromptSyntaxError
    from expressiongrid.prompts import (
        explain,
        extract_networks,
        get_hires_schedule,
        get_schedule,
        parse_attention,
        schedule_index_for_call,
        split_and,
    )
    from expressiongrid.prompts.attention import is_break
    from expressiongrid.prompts.chunking import chunk_fragments

    steps = rng.randint(1, 60)
    parse_seconds = 0.0

    def parse(fn, *args):
        """Call one parsing function, adding its CPU time (also when it raises) to the prompt's parse time."""
        nonlocal parse_seconds
        t0 = time.process_time()
        try:
            return fn(*args)
        finally:
            parse_seconds += time.process_time() - t0

    try:
        clean, _ = parse(extract_networks, prompt)
    except PromptSyntaxError:
        clean = prompt
    texts, weights = parse(split_and, clean)
    assert len(texts) == len(weights) >= 1
    for text in texts:
        schedule = parse(get_schedule, text, steps)
        check_schedule(schedule, steps)
        assert schedule == get_schedule(text, steps), "not deterministic"
        for call in range(steps):
            assert 0 <= schedule_index_for_call(schedule, call) < len(schedule)
        hires = parse(get_hires_schedule, text, steps, max(1, steps // 2))
        check_schedule(hires, max(1, steps // 2))
        for entry in dict.fromkeys(text for _, text in schedule):  # each distinct text once, as the encoder does
            try:
                fragments = parse(parse_attention, entry)
            except PromptSyntaxError as exc:
                assert exc.position is not None and 0 <= exc.position < len(entry)
                continue
            tokenized = [(None if is_break(f) else tokenizer.encode(f[0]), f[1]) for f in fragments]
            chunked = chunk_fragments(tokenized, bos=tokenizer.bos, eos=tokenizer.eos, comma=tokenizer.comma)
            assert all(len(c.tokens) == 77 for c in chunked.chunks)
    if with_explain:
        explain(prompt, steps, negative_prompt=prompt)
    return parse_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--explain-every", type=int, default=20, help="also run explain() on every N-th prompt")
    parser.add_argument("--max-ms", type=float, default=100.0, help="CPU milliseconds one prompt's parsing may take")
    parser.add_argument("--progress-every", type=int, default=0, help="print a progress line every N prompts")
    args = parser.parse_args(argv)

    from expressiongrid.prompts.tokens import load_tokenizer

    tokenizer = load_tokenizer("sd15")
    rng = random.Random(args.seed)
    failures: dict[str, list[str]] = {}
    start = time.perf_counter()
    slowest = {"parse_ms": 0.0, "length": 0, "prompt": ""}
    slowest_total_ms = 0.0
    over_limit = 0
    for i in range(args.count):
        prompt = random_prompt(rng)
        cpu0 = time.process_time()
        parse_ms = 0.0
        try:
            parse_ms = 1000 * run_one(prompt, rng, tokenizer,
                                      with_explain=args.explain_every > 0 and i % args.explain_every == 0)
        except Exception as exc:  # noqa: BLE001 - the point is to catch anything
            key = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            examples = failures.setdefault(key, [])
            if len(examples) < 3:
                examples.append(prompt)
                if len(failures) == 1 and len(examples) == 1:
                    traceback.print_exc(file=sys.stderr)
        slowest_total_ms = max(slowest_total_ms, (time.process_time() - cpu0) * 1000)
        over_limit += parse_ms > args.max_ms
        if parse_ms > slowest["parse_ms"]:
            slowest = {"parse_ms": round(parse_ms, 1), "length": len(prompt), "prompt": prompt[:200]}
        if args.progress_every and (i + 1) % args.progress_every == 0:
            print(json.dumps({"done": i + 1, "failure_kinds": len(failures), "over_limit": over_limit,
                              "slowest_parse_ms": slowest["parse_ms"], "seconds": round(time.perf_counter() - start)}),
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    summary = {
        "count": args.count,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "tokenizer": tokenizer.name,
        "failure_kinds": len(failures),
        "failures": failures,
        "max_ms": args.max_ms,
        "prompts_over_max_ms": over_limit,
        "slowest": slowest,
        "slowest_prompt_all_checks_cpu_ms": round(slowest_total_ms, 1),
    }
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 1 if failures or over_limit else 0


if __name__ == "__main__":
    sys.exit(main())
