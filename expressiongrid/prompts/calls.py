"""Which schedule entry each model call uses: one definition shared by the engine, ``explain`` and tests.

A1111 counts every model evaluation ("call", 0-based) and uses the first schedule entry whose end step is
at least the call index, so the first entry runs one call longer than its end step suggests
(``[a:b:5]`` uses ``a`` for calls 0-5). Second-order samplers evaluate the model twice per step and
get a schedule built on twice the steps.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from expressiongrid.samplers import is_second_order


def total_model_calls(steps: int, sampler_name: str | None = None) -> int:
    """Model calls in a pass of ``steps`` steps: the step count the prompt schedule is built for."""
    if sampler_name is not None and is_second_order(sampler_name):
        return 2 * steps
    return steps


def schedule_index_for_call(schedule: Sequence[tuple[int, str]], call_index: int) -> int:
    """Index of the schedule entry model call ``call_index`` (0-based) uses: the first with end >= call.

    A call past the last end step (which a schedule built for the pass never produces) falls back to
    entry 0, as A1111 does.
    """
    ends = [end for end, _ in schedule]
    i = bisect_left(ends, call_index)
    return i if i < len(ends) else 0


def calls_for_entries(schedule: Sequence[tuple[int, str]], num_calls: int) -> list[tuple[int, int]]:
    """For each schedule entry, the (first, last) call index that uses it; (-1, -1) if none does."""
    spans = [(-1, -1)] * len(schedule)
    for call in range(num_calls):
        i = schedule_index_for_call(schedule, call)
        first, _ = spans[i]
        spans[i] = (call if first < 0 else first, call)
    return spans
