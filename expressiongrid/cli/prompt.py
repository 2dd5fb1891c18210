"""``expressiongrid prompt``: inspect how a prompt is read (no torch import: starts instantly)."""

from __future__ import annotations

import click

from expressiongrid.cli._common import echo_json
from expressiongrid.limits import MAX_STEPS


@click.group(epilog="Example:\n\n\b\n  expressiongrid prompt explain \"a [cat:dog:0.5], (smiling:1.2)\" --steps 20")
def prompt() -> None:
    """Inspect prompts written in A1111 syntax."""


def _steps_label(first: int, last: int) -> str:
    if first < 0:
        return "never used"
    return f"step {first + 1}" if first == last else f"steps {first + 1}-{last + 1}"


def _print_part(part, title: str) -> None:
    click.echo(title)
    shown: set[str] = set()
    for entry in part.schedule:
        calls = "no calls" if entry.first_call < 0 else f"calls {entry.first_call}-{entry.last_call}"
        click.echo(f"  {_steps_label(entry.first_step, entry.last_step)} ({calls}): {entry.text!r}")
        if entry.text in shown:  # alternation repeats texts: details once is enough
            continue
        shown.add(entry.text)
        weighted = ", ".join(
            "BREAK" if (t, w) == ("BREAK", -1.0) else (f"{t!r}" if w == 1.0 else f"{t!r} x{w:.4g}") for t, w in entry.fragments
        )
        click.echo(f"      fragments: {weighted}")
        chunks = ", ".join(f"{n}/75" for n in entry.chunk_tokens)
        plural = "s" if len(entry.chunk_tokens) != 1 else ""
        click.echo(f"      tokens: {entry.token_count}/{entry.target_token_count} ({len(entry.chunk_tokens)} chunk{plural}: {chunks})")
        if entry.error:
            click.echo(f"      error: {entry.error}")


@prompt.command(epilog="Example:\n\n\b\n  expressiongrid prompt explain \"closeup, [neutral:angry face:0.2] <lora:x:0.8>\" --steps 20 --sampler Heun")
@click.argument("text")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), required=True, help="Sampler steps of the pass.")
@click.option("--sampler", default=None, help="A1111 sampler name; second-order samplers (Heun, DPM2, ...) double the model calls.")
@click.option("--negative", "negative", default="", help="Negative prompt to explain as well (no AND split, tags stay text).")
@click.option("--tokenizer", type=click.Choice(["sd15", "tiny"]), default="sd15", show_default=True, help="Vocabulary for token counts.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(text: str, steps: int, sampler: str | None, negative: str, tokenizer: str, as_json: bool) -> None:
    """Show how TEXT is read: schedule (which text runs at which steps), weighted fragments, token counts
    per 75-token chunk, extracted LoRA tags and warnings about anything A1111 silently ignores."""
    from expressiongrid.prompts.explanation import explain as explain_prompt

    result = explain_prompt(text, steps, sampler, negative_prompt=negative, tokenizer=tokenizer)
    if as_json:
        echo_json(result.to_dict())
        return
    sampler_note = f", sampler {sampler}" if sampler else ""
    click.echo(f"{steps} steps{sampler_note}: {result.model_calls} model calls (token counts: {result.tokenizer} vocabulary)")
    for net in result.networks:
        click.echo(f"{net.kind}: {net.name} (text encoder {net.te_weight:g}, unet {net.unet_weight:g})")
    multi = len(result.parts) > 1
    for i, part in enumerate(result.parts):
        _print_part(part, f"AND part {i + 1} (weight {part.weight:g}):" if multi else "Schedule:")
    if result.negative is not None:
        _print_part(result.negative, "Negative prompt:")
    if result.warnings:
        click.echo("Warnings:")
        for w in result.warnings:
            where = f" (at position {w.position})" if w.position is not None else ""
            click.echo(f"  - {w.kind}{where}: {w.message}")
    else:
        click.echo("No warnings.")
