"""Extra-network tags: ``<lora:name:weight>``, ``<lora:name:te:unet>`` and other ``<kind:args>`` tags.

As in A1111, tags are taken out of the raw positive prompt before ``AND`` splitting and prompt editing,
so ``[<lora:a:1>:<lora:b:1>:0.5]`` activates both LoRAs for the whole image and leaves ``[::0.5]``.
Negative prompts are never scanned: a tag there is plain text sent to the text encoder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from expressiongrid.errors import PromptSyntaxError
from expressiongrid.limits import MAX_NETWORK_WEIGHT
from expressiongrid.prompts.warnings import PromptWarning

_TAG = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = {"lora": "lora", "lyco": "lora"}  # A1111 treats "lyco" as an alias of "lora"
KNOWN_KINDS = {"lora", "lyco", "hypernet"}


@dataclass(frozen=True)
class NetworkRef:
    """One extra-network tag. ``kind`` is "lora" for ``<lora:..>`` and ``<lyco:..>``; ``raw`` is the tag as written.

    ``te_weight`` applies to the text encoder, ``unet_weight`` to the UNet (defaults to ``te_weight``).
    ``position`` is the tag's character offset in the prompt it came from.
    """

    kind: str
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    raw: str = ""
    position: int = 0


def _weight(value: str, tag: str, position: int) -> float:
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise PromptSyntaxError(
            f"'{value[:20]}' in '{tag[:60]}' is not a number: write weights like <lora:name:0.8> or "
            "<lora:name:0.8:1.0>",
            position=position,
        )
    if abs(weight) > MAX_NETWORK_WEIGHT:
        raise PromptSyntaxError(
            f"weight {value[:20]} in '{tag[:60]}' is beyond +-{MAX_NETWORK_WEIGHT:g}: such a LoRA only makes "
            "noise; use a weight like 0.8",
            position=position,
        )
    return weight


def _split_args(args_text: str) -> tuple[list[str], dict[str, str]]:
    """A tag's arguments as A1111 reads them: ``name:1:te=0.5`` -> ``(["name", "1"], {"te": "0.5"})``."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for arg in args_text.split(":"):
        parts = arg.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(arg)
    return positional, named


def _parse_tag(kind: str, args_text: str, raw: str, position: int) -> NetworkRef:
    positional, named = _split_args(args_text)
    name = positional[0] if positional else ""
    te_text = named.get("te", positional[1] if len(positional) > 1 else None)
    unet_text = named.get("unet", positional[2] if len(positional) > 2 else None)
    te = _weight(te_text, raw, position) if te_text is not None else 1.0
    unet = _weight(unet_text, raw, position) if unet_text is not None else te
    return NetworkRef(_LORA_KINDS.get(kind, kind), name, te, unet, raw, position)


def extract_networks(prompt: str) -> tuple[str, list[NetworkRef]]:
    """Remove every ``<kind:args>`` tag from a positive prompt; return the cleaned prompt and the tags in order.

    Raises :class:`~expressiongrid.errors.PromptSyntaxError` for a non-numeric weight (A1111 fails there too).

    Example: ``extract_networks("a <lora:x:0.6> b")`` gives ``("a  b", [NetworkRef("lora", "x", 0.6, 0.6, ...)])``.
    """
    refs = [_parse_tag(m.group(1), m.group(2), m.group(0), m.start()) for m in _TAG.finditer(prompt)]
    return _TAG.sub("", prompt), refs


def network_warnings(prompt: str, negative_prompt: str = "") -> list[PromptWarning]:
    """Warnings about tags: unknown kinds in the prompt, and tags in the negative prompt (kept as text)."""
    warnings = []
    for m in _TAG.finditer(prompt):
        if m.group(1) not in KNOWN_KINDS:
            warnings.append(
                PromptWarning(
                    "unknown-network",
                    f"'{m.group(0)}' is removed from the prompt but '{m.group(1)}' is not a known network kind; it does nothing",
                    m.start(),
                )
            )
        elif m.group(1) in _LORA_KINDS:
            positional, named = _split_args(m.group(2))
            ignored = [f"dyn={named['dyn']}" if "dyn" in named else None,
                       f"dynamic dim {positional[3]}" if len(positional) > 3 and "dyn" not in named else None,
                       *(f"{v!r}" for v in positional[4:]), *(f"{k}={v}" for k, v in named.items()
                                                              if k not in ("te", "unet", "dyn"))]
            ignored = [what for what in ignored if what]
            if ignored:
                warnings.append(
                    PromptWarning(
                        "ignored-network-argument",
                        f"'{m.group(0)}': {', '.join(ignored)} not applied; this tool reads a LoRA tag's name, text "
                        "encoder and UNet weights (te=, unet=) and uses every rank (A1111's dyn= keeps the first N)",
                        m.start(),
                    )
                )
    for m in _TAG.finditer(negative_prompt):
        warnings.append(
            PromptWarning(
                "network-in-negative",
                f"'{m.group(0)}' in the negative prompt is not activated; A1111 sends it to the text encoder as text",
                m.start(),
            )
        )
    return warnings
