"""``AND`` (composable diffusion): a positive prompt split into weighted parts, as A1111 does it.

The split happens on the whole prompt before scheduling, on the case-sensitive word ``AND``; each part may
end in ``:weight``. Negative prompts are never split.
"""

from __future__ import annotations

import re

_AND = re.compile(r"\bAND\b")
# A part's text keeps its leading whitespace; trailing whitespace and a trailing ":<number>" go.
_PART = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.DOTALL)


def split_and(prompt: str) -> tuple[list[str], list[float]]:
    """Split a positive prompt on ``AND`` into part texts and their weights (default 1.0).

    Example: ``split_and("cat:1.2 AND dog") == (["cat", " dog"], [1.2, 1.0])``.
    """
    texts: list[str] = []
    weights: list[float] = []
    for part in _AND.split(prompt):
        m = _PART.match(part)
        # The pattern matches every string (all of it is optional); the guard is for type checkers.
        text, weight = (m.group(1), m.group(2)) if m else (part, None)
        texts.append(text)
        weights.append(float(weight) if weight is not None else 1.0)
    return texts, weights


def unique_texts(texts: list[str]) -> list[str]:
    """The distinct part texts in order of first appearance (each is scheduled and encoded once)."""
    return list(dict.fromkeys(texts))
