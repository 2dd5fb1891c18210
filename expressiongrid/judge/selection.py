"""Active pair selection: ask first about the pairs whose order the current model knows least.

For a candidate pair the score is ``p (1 - p) * Var(s_a - s_b)``: the Fisher information one more answer
would add about the pair's difference, weighted by how uncertain that difference still is. It is largest for
pairs the model thinks are a coin flip *and* has little evidence about, which is where one answer moves the
ranking most; pairs already settled by many answers or by transitivity score low. Ties between equal scores
are broken by a seeded random number so two judges do not see the same sequence, while a test can.

A judge never sees the same pair twice (in either order, skips included) unless ``allow_repeats`` is set,
and then only once every pair has been seen.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from expressiongrid.judge.bt import BTFit


@dataclass(frozen=True)
class Candidate:
    """A pair chosen to ask next, already in display order (left, right)."""

    question_id: str
    left: str
    right: str
    score: float


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The unordered form of a pair, so (a, b) and (b, a) count as one."""
    return (a, b) if a <= b else (b, a)


def choose_pair(
    fits: dict[str, BTFit],
    items: dict[str, Sequence[str]],
    seen: Iterable[tuple[str, str, str]],
    *,
    allow_repeats: bool = False,
    rng: random.Random | None = None,
) -> Candidate | None:
    """Pick the most informative pair over all questions.

    ``fits``: question id -> current model (fitted on everyone's answers: a pair other judges settled is
    less informative for this judge too). ``items``: question id -> the keys that can be compared.
    ``seen``: (question id, key, key) triples this judge has already answered. Returns None when nothing is
    left to ask (every pair seen and repeats not allowed, or no question has two items).
    """
    rng = rng or random.Random(0)
    seen_pairs = {(q, *pair_key(a, b)) for q, a, b in seen}
    best: list[tuple[float, float, str, str, str]] = []
    repeat_pool: list[tuple[float, float, str, str, str]] = []
    for qid, keys in items.items():
        fit = fits[qid]
        for a, b in itertools.combinations(sorted(keys), 2):
            p = fit.win_probability(a, b)
            score = p * (1.0 - p) * fit.difference_variance(a, b)
            entry = (score, rng.random(), qid, a, b)
            if (qid, a, b) in seen_pairs:
                repeat_pool.append(entry)
            else:
                best.append(entry)
    pool = best or (repeat_pool if allow_repeats else [])
    if not pool:
        return None
    score, _, qid, a, b = max(pool)
    # Random sides, so a judge's habit of picking one side does not become a preference for an item.
    if rng.random() < 0.5:
        a, b = b, a
    return Candidate(question_id=qid, left=a, right=b, score=score)
