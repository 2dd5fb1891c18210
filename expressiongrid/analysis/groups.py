"""Answers to the study's questions across characters: do groups of characters differ in flexibility?

Characters are grouped by their ``kind`` (LoRA / embedding, from their files) and by each ``[tags]`` entry of
their character files (``group`` such as celebrity / nobody, ``creator``). Per group: the mean flexibility
with a 95 % bootstrap interval over its characters; per grouping: a permutation test of "the groups do not
differ" (the difference of the two means, or the range of the means for more groups; the labels shuffled
10,000 times, seeded, so the same run gives the same report). Pure Python.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PERMUTATIONS = 10_000
BOOTSTRAP = 2_000


@dataclass
class GroupStat:
    name: str
    characters: list[str]
    mean: float
    low: float          # 95 % bootstrap interval of the mean
    high: float


@dataclass
class GroupComparison:
    attribute: str      # "kind", "group", "creator"
    groups: list[GroupStat] = field(default_factory=list)
    statistic: float = 0.0   # difference of means (2 groups) or range of means
    p_value: float = 1.0     # permutation test
    note: str = ""


def _mean(values):
    return sum(values) / len(values)


def _statistic(groups: list[list[float]]) -> float:
    means = [_mean(g) for g in groups]
    return means[0] - means[1] if len(means) == 2 else max(means) - min(means)


def _bootstrap(values: list[float], rng: random.Random) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    means = sorted(_mean([rng.choice(values) for _ in values]) for _ in range(BOOTSTRAP))
    return means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


def compare_groups(characters: dict[str, tuple[float | None, dict]], seed: int = 0) -> list[GroupComparison]:
    """``characters``: id -> (flexibility, attributes such as {"kind": "LoRA", "group": "celebrity"}) of the
    non-reference characters. A grouping needs two groups and at least three measured characters."""
    rng = random.Random(seed)
    attributes = sorted({a for _, attrs in characters.values() for a in attrs}, key=lambda a: (a != "kind", a))
    out = []
    for attribute in attributes:
        members: dict[str, list[tuple[str, float]]] = {}
        for cid, (flex, attrs) in characters.items():
            if flex is not None and attrs.get(attribute):
                members.setdefault(attrs[attribute], []).append((cid, flex))
        if len(members) < 2 or sum(len(m) for m in members.values()) < 3:
            continue
        names = sorted(members)
        values = [[f for _, f in members[n]] for n in names]
        comparison = GroupComparison(attribute=attribute)
        for name, vals in zip(names, values):
            low, high = _bootstrap(vals, rng)
            comparison.groups.append(GroupStat(name, [c for c, _ in members[name]], _mean(vals), low, high))
        observed = _statistic(values)
        pooled = [v for vals in values for v in vals]
        sizes = [len(v) for v in values]
        extreme = 0
        for _ in range(PERMUTATIONS):
            rng.shuffle(pooled)
            parts, start = [], 0
            for n in sizes:
                parts.append(pooled[start:start + n])
                start += n
            if abs(_statistic(parts)) >= abs(observed) - 1e-12:
                extreme += 1
        comparison.statistic = observed
        comparison.p_value = (extreme + 1) / (PERMUTATIONS + 1)
        if min(sizes) < 3:
            comparison.note = "a group has fewer than 3 characters: the test can hardly reach significance"
        out.append(comparison)
    return out


# Measures the seed posts show per image that this tool does not compute: listed in the report, not guessed.
NOT_MEASURED = [
    ("mood", "a free-text description of the image's mood (the seed posts used a vision-language model)"),
    ("camera shot", "a description of the framing and shot (likewise)"),
    ("likelihood of AI", "an AI-image detector's score: no detector ships offline"),
    ("image errors", "a description of visible defects (likewise)"),
]
