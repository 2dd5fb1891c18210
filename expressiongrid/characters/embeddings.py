"""Textual-inversion embeddings: A1111 ``.pt`` (``string_to_param``), ``.safetensors`` (``emb_params`` or
``string_to_param``) and diffusers ``learned_embeds`` files, read without running pickled code.

A1111's rules (``create_embedding_from_data``): a dict with ``string_to_param`` (exactly one entry) is an A1111
embedding; a dict with ``clip_l`` and ``clip_g`` is SDXL; otherwise a dict whose single value is a tensor
(diffusers ``{token: tensor}``, safetensors ``emb_params``). 1-D tensors are one vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.errors import CharacterError

FAMILY_BY_WIDTH = {768: "sd15", 1024: "sd2", 1280: "sdxl", 32: "sd15"}  # 32: the built-in tiny model


@dataclass
class EmbeddingFile:
    """A loaded embedding: its vectors ``[n_vectors, width]`` and what the file says about itself."""

    path: Path
    format: str  # "a1111" | "safetensors" | "diffusers" | "sdxl"
    vectors: object  # torch.Tensor [n_vectors, width]
    family: str
    width: int
    metadata: dict = field(default_factory=dict)  # A1111 training info (step, sd_checkpoint_name, ...)

    @property
    def n_vectors(self) -> int:
        """How many token positions the embedding fills in a prompt."""
        return int(self.vectors.shape[0])


def _one_tensor(value, path, what):
    import torch

    if isinstance(value, torch.nn.ParameterDict) or isinstance(value, dict):
        items = list(value.items())
        if len(items) != 1:
            raise CharacterError(f"{path}: {what} holds {len(items)} entries; an embedding has exactly one")
        value = items[0][1]
    if not isinstance(value, torch.Tensor):
        raise CharacterError(f"{path}: {what} is a {type(value).__name__}, not a tensor")
    value = value.detach()
    if value.dim() == 1:
        value = value.unsqueeze(0)
    if value.dim() != 2 or value.shape[0] == 0:
        raise CharacterError(f"{path}: embedding tensor has shape {tuple(value.shape)}; expected (vectors, width)")
    return value.float().clone()


def parse_embedding(data: dict, path, metadata: dict | None = None) -> EmbeddingFile:
    """Interpret a loaded state dict as an embedding (raises ``CharacterError`` if it is not one)."""
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    info = {}
    if "string_to_param" in data:
        vectors = _one_tensor(data["string_to_param"], path, "string_to_param")
        fmt = "a1111"
        for key in ("name", "step", "sd_checkpoint", "sd_checkpoint_name"):
            if isinstance(data.get(key), (str, int, float)):
                info[key] = data[key]
    elif any(k.startswith("string_to_param.") for k in data):
        keys = [k for k in data if k.startswith("string_to_param.")]
        vectors = _one_tensor({k: data[k] for k in keys}, path, "string_to_param")
        fmt = "safetensors"
    elif "clip_l" in data and "clip_g" in data:
        vectors = _one_tensor(data["clip_g"], path, "clip_g")
        fmt = "sdxl"
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            raise CharacterError(
                f"{path}: not an embedding (expected string_to_param, emb_params or one token tensor; "
                f"found keys {sorted(data)[:5]})"
            )
        vectors = _one_tensor(tensors, path, repr(next(iter(tensors))))
        fmt = "safetensors" if suffix == ".safetensors" else "diffusers"
    width = int(vectors.shape[1])
    family = "sdxl" if fmt == "sdxl" else FAMILY_BY_WIDTH.get(width, "unknown")
    info.update(metadata or {})
    return EmbeddingFile(path, fmt, vectors, family, width, info)


def load_embedding(path: str | Path) -> EmbeddingFile:
    """Load an embedding file safely (pickles through the weights-only unpickler and allow-list)."""
    from expressiongrid.characters.formats import load_state

    data, metadata = load_state(path)
    return parse_embedding(data, path, metadata)
