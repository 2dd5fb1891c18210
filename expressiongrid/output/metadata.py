"""A cell's metadata as data: what made the image, which resources it used, their hashes.

The runner builds one ``CellMetadata`` per image and the store keeps it (``CellRecord.metadata``). The
A1111 ``parameters`` text is formatted from it only when a file is written: the cell's PNG, and a grid,
whose text merges the metadata of its cells (``grid_metadata``). Cells made before the store kept
metadata have only their text; ``CellMetadata.from_parameters`` reads it back for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from expressiongrid.output.infotext import (
    format_parameters,
    merge_civitai_resources,
    merge_hashes,
    parse_name_hashes,
    parse_parameters,
)


@dataclass
class CellMetadata:
    """Everything an image's A1111 metadata states, as data.

    ``sampler`` is A1111's sampler name without the schedule type; ``schedule_type`` the one it ran with,
    "Automatic" for samplers without a default (A1111 1.10 always writes it). ``hashes`` are civitai's AutoV2 hashes by resource key (``model``, ``vae``,
    ``lora:NAME``, ``embed:NAME``); ``lora_hashes`` / ``ti_hashes`` A1111's short hashes by name;
    ``civitai_resources`` the resources civitai knows by version id; ``resources`` every resource the
    character used, as the activator described it (type, name, hash, weight, ...).
    """

    prompt: str
    negative_prompt: str
    steps: int
    sampler: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    schedule_type: str | None = None
    model: str | None = None
    model_hash: str | None = None
    vae: str | None = None
    vae_hash: str | None = None
    clip_skip: int = 1
    rng: str | None = None
    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    civitai_resources: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    def parameters(self, extra: Mapping[str, Any] | None = None) -> str:
        """The A1111 ``parameters`` text (with `extra` keys, e.g. a grid's axes)."""
        return format_parameters(
            self.prompt, self.negative_prompt, steps=self.steps, sampler=self.sampler,
            schedule_type=self.schedule_type, cfg_scale=self.cfg_scale, seed=self.seed, width=self.width,
            height=self.height, model_hash=self.model_hash, model=self.model, vae_hash=self.vae_hash,
            vae=self.vae, clip_skip=self.clip_skip, rng=self.rng, lora_hashes=self.lora_hashes or None,
            ti_hashes=self.ti_hashes or None, hashes=self.hashes or None,
            civitai_resources=self.civitai_resources or None, extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_parameters(cls, text: str) -> CellMetadata:
        """Read the A1111 text of a cell made before metadata was stored as data."""
        p = parse_parameters(text)
        width, height = int(p.get("Size-1", 0) or 0), int(p.get("Size-2", 0) or 0)

        def names(value) -> dict[str, str]:
            return dict(value) if isinstance(value, dict) else parse_name_hashes(value) if value else {}

        return cls(
            prompt=p["Prompt"], negative_prompt=p["Negative prompt"], steps=int(p.get("Steps", 0) or 0),
            sampler=p.get("Sampler", ""), cfg_scale=float(p.get("CFG scale", 0) or 0),
            seed=int(p.get("Seed", 0) or 0), width=width, height=height,
            schedule_type=p.get("Schedule type"),
            model=p.get("Model"), model_hash=p.get("Model hash"), vae=p.get("VAE"), vae_hash=p.get("VAE hash"),
            clip_skip=int(p.get("Clip skip", 1) or 1), rng=p.get("RNG") if p.get("RNG") != "GPU" else None,
            lora_hashes=names(p.get("Lora hashes")), ti_hashes=names(p.get("TI hashes")),
            hashes=dict(p["Hashes"]) if isinstance(p.get("Hashes"), dict) else {},
            civitai_resources=list(p["Civitai resources"]) if isinstance(p.get("Civitai resources"), list) else [],
        )


def record_metadata(record: Any) -> CellMetadata | None:
    """A stored cell's metadata: the stored data, else its A1111 text read back (older run folders)."""
    if getattr(record, "metadata", None):
        return CellMetadata.from_dict(record.metadata)
    if getattr(record, "parameters", None):
        return CellMetadata.from_parameters(record.parameters)
    return None


def grid_metadata(cells: Sequence[CellMetadata], first: Any) -> CellMetadata:
    """A grid's metadata: its first cell's settings, with every cell's resources and hashes.

    `first` is the first cell's store record, whose seed and settings are what the grid states. The prompts
    are the first cell's as its own image states them (an embedding by its file stem, so a pasted grid finds
    it as the cell does), not the store's prompt as it was encoded.
    """
    p0 = cells[0]
    return dataclasses.replace(
        p0, prompt=p0.prompt, negative_prompt=p0.negative_prompt, steps=first.steps,
        sampler=p0.sampler or first.sampler, cfg_scale=first.cfg_scale, seed=first.seed, width=first.width,
        height=first.height,
        lora_hashes=merge_hashes(*[c.lora_hashes for c in cells]),
        ti_hashes=merge_hashes(*[c.ti_hashes for c in cells]),
        hashes=merge_hashes(*[c.hashes for c in cells]),
        civitai_resources=merge_civitai_resources(*[c.civitai_resources for c in cells]),
        resources=list({(r.get("type"), r.get("name")): r for c in cells for r in c.resources}.values()),
    )
