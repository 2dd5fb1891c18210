"""Reading model files safely: safetensors headers (pure Python) and pickled ``.pt`` files (never executed).

Everything that looks at a file before the model is loaded lives here, so checks can run in a fraction of
a second and a broken or hostile file is refused before any generation starts.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.errors import CharacterError

MODEL_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt", ".pth")
PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB


@dataclass
class SafetensorsHeader:
    """The parsed header: tensor name -> (dtype, shape, (start, end)), the ``__metadata__`` strings."""

    tensors: dict[str, dict]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of tensor ``key`` as the header declares it."""
        return tuple(self.tensors[key]["shape"])


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header; refuse truncated or non-safetensors files.

    Only the header is read (no torch), so this is cheap enough to run over every file before a run.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CharacterError(f"{path}: file is empty or truncated ({size} bytes); download it again")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise CharacterError(
                    f"{path}: not a valid safetensors file (header claims {n} bytes, file has {size}); "
                    "it is truncated or corrupt: download it again"
                )
            blob = fh.read(n)
    except OSError as exc:
        raise CharacterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(blob.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CharacterError(f"{path}: corrupt safetensors header ({exc}); download it again") from exc
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        try:
            start, stop = info["data_offsets"]
            info["shape"] = list(info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CharacterError(f"{path}: corrupt safetensors header entry {name!r}") from exc
        end = max(end, stop)
    if 8 + n + end > size:
        raise CharacterError(
            f"{path}: truncated ({size} bytes, the header needs {8 + n + end}); download it again"
        )
    return SafetensorsHeader(tensors=header, metadata={str(k): str(v) for k, v in metadata.items()}, data_start=8 + n)


def load_safetensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """All tensors (CPU) and the metadata of a safetensors file, after validating its header."""
    header = read_safetensors_header(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu"), header.metadata
    except Exception as exc:  # safetensors raises its own error types for bad data
        raise CharacterError(f"{path}: cannot read tensors ({exc}); the file is corrupt: download it again") from exc


# Classes an old A1111 embedding may pickle. Anything else (os.system, eval, ...) is refused by the
# weights-only unpickler before it can run.
def _allowed_globals():
    import torch

    return [torch.nn.ParameterDict, torch.nn.Parameter]


def load_pickle(path: str | os.PathLike):
    """Load a ``.pt``/``.bin`` with torch's weights-only unpickler and an explicit allow-list.

    Code in the pickle is never executed: an unknown global is an error, not a call.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # not a refusal: the bytes are simply not a pickle
            raise CharacterError(f"{path}: corrupt or not a PyTorch file ({exc}); download it again") from exc
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "Unsupported global" in line or "GLOBAL" in line), "")
        raise CharacterError(
            f"{path}: refused to load: the pickle needs code or classes outside the allow-list "
            f"(ParameterDict, Parameter, tensors){': ' + detail if detail else ''}. "
            "Ask for a .safetensors version of this file"
        ) from exc
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError, TypeError,
            AttributeError, MemoryError) as exc:  # what torch's reader raises for bytes that are not a model
        raise CharacterError(f"{path}: corrupt or truncated file ({exc.__class__.__name__}: {exc}); download it again") from exc


def load_state(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of any supported model file (safetensors, or a pickle loaded safely)."""
    path = Path(path)
    if not path.exists():
        raise CharacterError(f"{path}: file not found")
    if not os.access(path, os.R_OK):
        raise CharacterError(f"{path}: file is not readable (check its permissions)")
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise CharacterError(f"{path}: unrecognised content ({type(data).__name__}, expected a dict of tensors)")
        return data, {}
    raise CharacterError(f"{path}: unsupported file type {path.suffix!r} (expected one of {', '.join(MODEL_SUFFIXES)})")
