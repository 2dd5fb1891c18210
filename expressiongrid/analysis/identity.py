"""Identity from dlib's 128-d face descriptors: distances, and when a face stops being the same person."""

from __future__ import annotations

import math
from collections.abc import Sequence

# dlib's own rule: two faces with descriptors closer than 0.6 are the same person (99.38 % on LFW).
IDENTITY_THRESHOLD = 0.6


def identity_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two face descriptors (0 = identical; above 0.6 = another person)."""
    if len(a) != len(b):
        from expressiongrid.errors import AnalysisError

        raise AnalysisError(f"face descriptors of different lengths ({len(a)} and {len(b)}): analyse the run again")
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def identity_flag(to_neutral: float | None, to_others: float | None) -> str | None:
    """Why a cell no longer looks like its character, or None: beyond the same-person threshold from its own
    neutral face, or closer to another character's neutral face than to its own."""
    if to_neutral is None:
        return None
    if to_neutral > IDENTITY_THRESHOLD:
        return f"{to_neutral:.2f} from its own neutral face (same-person threshold {IDENTITY_THRESHOLD})"
    if to_others is not None and to_others < to_neutral:
        return "closer to another character's neutral face than to its own"
    return None
