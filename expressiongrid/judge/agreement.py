"""Agreement measures: between two orderings, between judges, and between people and automatic scores.

Kendall's tau-b is the headline number everywhere: it is the share of concordant minus discordant pairs,
corrected for ties, so it reads the same way whether it compares two people or a person and a metric.
Pairwise accuracy (how often a score orders a pair the way a person chose) is reported beside it because it
uses the raw answers, not a fitted model, and so also works when each person judged only a few pairs.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from expressiongrid.judge.bt import Outcome


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two equally long score lists; None when undefined (fewer than 2 items or a
    constant list)."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs equally long lists, got {len(x)} and {len(y)}")
    x = [float(v) for v in x]  # plain floats: numpy bools do not subtract
    y = [float(v) for v in y]
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    if denom == 0:
        return None
    return (concordant - discordant) / denom


def tau_between(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float | None, int]:
    """Kendall tau-b over the keys two score maps share, and how many keys that was."""
    common = sorted(set(a) & set(b))
    return kendall_tau([a[k] for k in common], [b[k] for k in common]), len(common)


def pairwise_accuracy(outcomes: Iterable[Outcome], scores: Mapping[str, float]) -> tuple[float | None, int]:
    """Share of decided answers (not "equal") whose winner the scores also rank higher; ties in the scores
    count half. Returns (accuracy or None, number of answers used)."""
    hits = 0.0
    used = 0
    for o in outcomes:
        if o.winner is None or o.a not in scores or o.b not in scores:
            continue
        loser = o.b if o.winner == o.a else o.a
        used += 1
        if scores[o.winner] > scores[loser]:
            hits += 1.0
        elif scores[o.winner] == scores[loser]:
            hits += 0.5
    return (hits / used if used else None), used


def _normalised(o: Outcome) -> tuple[tuple[str, str], int]:
    """The unordered pair and the answer as +1 (first key wins), -1 (second wins), 0 (equal)."""
    first, second = sorted((o.a, o.b))
    if o.winner is None:
        return (first, second), 0
    return (first, second), (1 if o.winner == first else -1)


def judge_pair_agreement(a: Iterable[Outcome], b: Iterable[Outcome]) -> tuple[float | None, int]:
    """How often two judges gave the same answer to the same pair (whichever side each saw it on).

    Only pairs both judges answered count; when a judge answered a pair more than once, their latest answer
    counts. Returns (share agreeing or None, number of shared pairs)."""
    latest_a = dict(_normalised(o) for o in a)
    latest_b = dict(_normalised(o) for o in b)
    shared = set(latest_a) & set(latest_b)
    if not shared:
        return None, 0
    same = sum(1 for pair in shared if latest_a[pair] == latest_b[pair])
    return same / len(shared), len(shared)
