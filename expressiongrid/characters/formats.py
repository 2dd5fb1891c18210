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
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CharacterError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings); "
                             "download it again")
    end = 0
    for name, info in header.items():
        problem = _entry_problem(info)
        if problem:
            raise CharacterError(f"{path}: corrupt safetensors header entry {name[:80]!r}: {problem}; "
                                 "download it again")
        end = max(end, info["data_offsets"][1])
    if 8 + n + end > size:
        raise CharacterError(
            f"{path}: truncated ({size} bytes, the header needs {8 + n + end}); download it again"
        )
    return SafetensorsHeader(tensors=header, metadata=dict(metadata), data_start=8 + n)


# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(info) -> str | None:
    """Why one tensor entry of a header cannot be right (None when it can): what safetensors checks too
    late or not at all (string offsets, nested shapes, a shape that does not match its bytes)."""
    if not isinstance(info, dict):
        return "not a table"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        return f"unknown dtype {str(dtype)[:20]!r}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return "shape must be a list of sizes"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        return "data_offsets must be two ascending byte offsets"
    count = 1
    for d in shape:
        count *= d
    if count * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        return f"shape {shape} needs {count * _DTYPE_BYTES[dtype]} bytes, the offsets give {offsets[1] - offsets[0]}"
    return None


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file byte for byte the same for the same tensors and metadata.

    safetensors keeps ``__metadata__`` in a hash map, so its order (and the file's hash, which is the
    A1111 LoRA hash and part of every cell key) changes from one process to the next; here the header is
    re-written with sorted metadata, same length, same tensor layout. Written atomically.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob = blob.ljust(n, b" ")  # same content, so never longer: the tensor data keeps its alignment
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data[:8] + blob + data[8 + n :])
    os.replace(tmp, path)
    return path


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


def check_model_file(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if it is a readable regular file; else a ``CharacterError`` saying what it is
    (missing, a folder, a pipe or device, not readable)."""
    path = Path(path)
    if not path.exists():
        raise CharacterError(f"{path}: file not found")
    if path.is_dir():
        raise CharacterError(f"{path}: is a folder, not a LoRA or embedding file")
    if not path.is_file():
        raise CharacterError(f"{path}: not a regular file (a pipe or device); give the model file itself")
    if not os.access(path, os.R_OK):
        raise CharacterError(f"{path}: not a readable file (check its permissions)")
    return path


def load_state(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of any supported model file (safetensors, or a pickle loaded safely)."""
    path = check_model_file(path)
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise CharacterError(f"{path}: unrecognised content ({type(data).__name__}, expected a dict of tensors)")
        return data, {}
    raise CharacterError(f"{path}: unsupported file type {path.suffix!r} (expected one of {', '.join(MODEL_SUFFIXES)})")
