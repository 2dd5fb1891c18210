"""Emphasis normalisation: how token weights are applied to the text encoder's output.

Works on anything with numpy/torch semantics (``z[..., None]``, ``.mean()``), so it is tested on float64
numpy arrays against A1111's numbers and used on torch tensors by the encoder.

Modes (A1111's "Emphasis mode" setting):

* ``"Original"`` (default): multiply each token vector by its weight, then rescale the whole batch so its
  mean equals the mean before weighting. The mean is over every text encoded together, every token and
  every channel: emphasis in one text shifts the others a little.
* ``"No norm"``: multiply only.
* ``"Ignore"``: weights are parsed but not applied.
* ``"None"``: brackets are not parsed at all (the text goes to the tokenizer as written).
"""

from __future__ import annotations

from expressiongrid.errors import UsageError

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


def check_emphasis_mode(mode: str) -> str:
    if mode not in EMPHASIS_MODES:
        raise UsageError(f"unknown emphasis mode {mode!r}; choose one of {', '.join(EMPHASIS_MODES)}")
    return mode


def apply_emphasis(z, multipliers, mode: str = "Original"):
    """Weight ``z`` (``[batch, tokens, channels]``) by ``multipliers`` (``[batch, tokens]``) with ``mode``."""
    check_emphasis_mode(mode)
    if mode in ("Ignore", "None"):
        return z
    if bool((multipliers == 1.0).all()):
        # Weighting by 1 and restoring the mean is the identity; skipping it also avoids 0/0 = NaN for an
        # encoder whose output has mean exactly 0 (A1111 would return NaN there).
        return z
    weighted = z * multipliers[..., None]
    if mode == "No norm":
        return weighted
    original_mean = z.mean()
    return weighted * (original_mean / weighted.mean())
