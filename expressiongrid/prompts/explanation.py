"""``explain``: everything the tool will do with a prompt, as data (the ``prompt explain`` command prints it).

Pure Python: token counts come from :mod:`expressiongrid.prompts.tokens`, so no torch or transformers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from expressiongrid.errors import PromptSyntaxError, UsageError
from expressiongrid.prompts.attention import is_break, parse_attention_with_warnings
from expressiongrid.prompts.calls import calls_for_entries, is_second_order
from expressiongrid.prompts.chunking import chunk_fragments, target_token_count
from expressiongrid.prompts.multicond import split_and
from expressiongrid.prompts.networks import (
    NetworkRef,
    extract_networks,
    network_warnings,
)
from expressiongrid.prompts.schedule import (
    Scheduled,
    parse_schedule_tree,
    schedule_from_tree,
    walk_constructs,
    when_to_step,
)
from expressiongrid.limits import MAX_PROMPT_CHARS
from expressiongrid.prompts.warnings import PromptWarning


@dataclass
class ScheduleEntry:
    """One text of a schedule and the model calls / sampler steps (both 0-based, inclusive) that use it."""

    end_step: int
    text: str
    first_call: int
    last_call: int
    first_step: int
    last_step: int
    fragments: list[tuple[str, float]]
    chunk_tokens: list[int]  # tokens used in each 75-token chunk
    token_count: int  # A1111's counter: "token_count/target"
    target_token_count: int
    error: str | None = None  # an emphasis syntax error A1111 would stop on


@dataclass
class PartExplanation:
    text: str
    weight: float
    schedule: list[ScheduleEntry]


@dataclass
class Explanation:
    prompt: str
    negative_prompt: str
    steps: int
    sampler: str | None
    model_calls: int
    tokenizer: str
    clean_prompt: str  # the positive prompt without extra-network tags
    networks: list[NetworkRef]
    parts: list[PartExplanation]  # AND parts of the positive prompt (one when there is no AND)
    negative: PartExplanation | None
    warnings: list[PromptWarning] = field(default_factory=list)

    @property
    def errors(self) -> list[PromptWarning]:
        """The ``syntax-error`` warnings: constructs A1111 stops on (e.g. ``(a:1.2.3)``)."""
        return [w for w in self.warnings if w.kind == "syntax-error"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _original_position(clean_pos: int, removed: list[tuple[int, int]]) -> int:
    """Map an offset in the tag-free prompt back to the prompt as written."""
    pos = clean_pos
    for start, length in removed:
        if start <= pos:
            pos += length
        else:
            break
    return pos


def _timing_warnings(tree, calls: int) -> list[PromptWarning]:
    found: list[PromptWarning] = []

    def visit(node) -> None:
        if not isinstance(node, Scheduled):
            return
        w = when_to_step(node.number, calls)
        if w < 1:
            found.append(
                PromptWarning(
                    "edit-never-before",
                    f"'when' {node.number} is below one step of {calls} model calls: the 'from' text is never used",
                    node.start,
                )
            )
        elif w >= calls:
            found.append(
                PromptWarning(
                    "edit-never-after",
                    f"'when' {node.number} is at or after the last of {calls} model calls: the 'to' text is never used"
                    + (" (a number with a dot is a fraction: 1.0 is 100 %)" if "." in node.number else ""),
                    node.start,
                )
            )

    walk_constructs(tree, visit)
    return found


def _explain_part(text: str, weight: float, calls: int, per_step: int, tokenizer, offset: int, removed, warnings, label: str):
    parsed = parse_schedule_tree(text)
    for w in parsed.warnings:
        pos = None if w.position is None else _original_position(offset + w.position, removed)
        warnings.append(PromptWarning(w.kind, w.message, pos))
    if parsed.tree is None:
        schedule = [(calls, text)]
    else:
        schedule = schedule_from_tree(parsed.tree, calls)
        for w in _timing_warnings(parsed.tree, calls):
            warnings.append(PromptWarning(w.kind, w.message, _original_position(offset + w.position, removed)))

    entries = []
    seen: set[tuple[str, str]] = set()
    for (end, entry_text), (first, last) in zip(schedule, calls_for_entries(schedule, calls)):
        error = None
        try:
            fragments, attention_warnings = parse_attention_with_warnings(entry_text)
        except PromptSyntaxError as exc:
            fragments, attention_warnings, error = [(entry_text, 1.0)], [], str(exc)
            attention_warnings = [PromptWarning("syntax-error", f"{label}: {exc} (A1111 stops with an error here)")]
        for w in attention_warnings:
            # The same bracket shows up in every schedule text: report it once, for the first text.
            if (w.kind, w.message) in seen:
                continue
            seen.add((w.kind, w.message))
            message = w.message if w.kind == "syntax-error" else f"{label}, in {entry_text!r} at character {w.position}: {w.message}"
            warnings.append(PromptWarning(w.kind, message, None))
        tokenized = [(None if is_break(f) else tokenizer.encode(f[0]), f[1]) for f in fragments]
        chunked = chunk_fragments(tokenized, bos=tokenizer.bos, eos=tokenizer.eos, comma=tokenizer.comma)
        entries.append(
            ScheduleEntry(
                end_step=end,
                text=entry_text,
                first_call=first,
                last_call=last,
                first_step=first // per_step if first >= 0 else -1,
                last_step=last // per_step if last >= 0 else -1,
                fragments=[(t, w) for t, w in fragments],
                chunk_tokens=[c.length for c in chunked.chunks],
                token_count=chunked.token_count,
                target_token_count=target_token_count(chunked.token_count),
                error=error,
            )
        )
    return PartExplanation(text, weight, entries)


def explain(
    prompt: str,
    steps: int,
    sampler: str | None = None,
    negative_prompt: str = "",
    tokenizer: str = "sd15",
    strict: bool = False,
) -> Explanation:
    """Explain how ``prompt`` is read for ``steps`` sampler steps: LoRA tags, ``AND`` parts, the schedule
    (which text runs at which steps), weighted fragments, token counts per chunk and every warning.

    Emphasis syntax errors A1111 would stop on are reported as ``syntax-error`` warnings (and on the
    entry's ``error``); with ``strict=True`` the first one is raised as ``PromptSyntaxError`` instead
    (for validating a study before any work). An unknown ``sampler`` raises ``SamplerError``.
    """
    from expressiongrid.prompts.tokens import load_tokenizer

    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps})")
    tok = load_tokenizer(tokenizer)
    per_step = 2 if sampler is not None and is_second_order(sampler) else 1
    calls = steps * per_step
    warnings: list[PromptWarning] = []
    try:
        clean, networks = extract_networks(prompt)
    except PromptSyntaxError as exc:
        warnings.append(PromptWarning("syntax-error", f"{exc} (A1111 stops with an error here)", exc.position))
        clean, networks = prompt, []
    warnings.extend(network_warnings(prompt, negative_prompt))
    for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            warnings.append(PromptWarning("too-long", f"{label}: {len(text):,} characters; a study refuses prompts "
                                          f"over {MAX_PROMPT_CHARS:,} (about {MAX_PROMPT_CHARS // 300} chunks)", None))

    removed = [(ref.position, len(ref.raw)) for ref in networks]
    # Offsets of removed tags in the clean prompt's coordinates, for mapping positions back.
    clean_removed = []
    shift = 0
    for start, length in removed:
        clean_removed.append((start - shift, length))
        shift += length

    texts, weights = split_and(clean)
    parts = []
    offset = 0
    multi = len(texts) > 1
    for i, (text, weight) in enumerate(zip(texts, weights)):
        start = clean.find(text, offset) if text else offset
        start = max(start, 0)
        label = f"AND part {i + 1}" if multi else "prompt"
        parts.append(_explain_part(text, weight, calls, per_step, tok, start, clean_removed, warnings, label))
        offset = start + len(text)

    negative = None
    if negative_prompt:
        neg_warnings: list[PromptWarning] = []
        negative = _explain_part(negative_prompt, 1.0, calls, per_step, tok, 0, [], neg_warnings, "negative prompt")
        warnings.extend(
            PromptWarning(w.kind, w.message if w.message.startswith("negative") else f"negative prompt: {w.message}", w.position)
            for w in neg_warnings
        )
        if re.search(r"\bAND\b", negative_prompt):
            warnings.append(
                PromptWarning("and-in-negative", "AND in the negative prompt is not a split: it is sent to the text encoder as a word", None)
            )
    result = Explanation(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=steps,
        sampler=sampler,
        model_calls=calls,
        tokenizer=tok.name,
        clean_prompt=clean,
        networks=networks,
        parts=parts,
        negative=negative,
        warnings=warnings,
    )
    if strict and result.errors:
        first = result.errors[0]
        raise PromptSyntaxError(first.message.removesuffix(" (A1111 stops with an error here)"), position=first.position, text=prompt)
    return result
