"""The prompt language: A1111's prompt editing, alternation, emphasis, AND, BREAK and extra-network tags.

Everything here is pure Python and imports no torch; the text-encoder side lives in
:mod:`expressiongrid.prompts.conditioning` and is imported only by code that encodes prompts.
"""

from __future__ import annotations

from expressiongrid.prompts.attention import parse_attention
from expressiongrid.prompts.calls import is_second_order, schedule_index_for_call, total_model_calls
from expressiongrid.prompts.multicond import split_and
from expressiongrid.prompts.networks import NetworkRef, extract_networks
from expressiongrid.prompts.schedule import get_hires_schedule, get_schedule
from expressiongrid.prompts.warnings import PromptWarning


def explain(prompt: str, steps: int, sampler: str | None = None, **kwargs):
    """Everything the tool will do with ``prompt``: see :func:`expressiongrid.prompts.explanation.explain`."""
    from expressiongrid.prompts.explanation import explain as _explain

    return _explain(prompt, steps, sampler, **kwargs)


__all__ = [
    "NetworkRef",
    "PromptWarning",
    "explain",
    "extract_networks",
    "get_hires_schedule",
    "get_schedule",
    "is_second_order",
    "parse_attention",
    "schedule_index_for_call",
    "split_and",
    "total_model_calls",
]
