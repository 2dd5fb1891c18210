"""File hashes as A1111 and civitai use them, cached by path, size and modification time.

- ``sha256(path)``: the whole file (civitai's "SHA256"; A1111's ``calculate_sha256``).
- ``autov2(path)``: its first 10 hex digits (A1111 "Model hash", civitai "AutoV2").
- ``autov1(path)``: A1111's old 8-digit model hash (sha256 of 64 KiB at offset 1 MiB).
- ``addnet_hash(path)``: sha256 of a safetensors file's bytes after the header (A1111 ``addnet_hash_safetensors``).
- ``lora_short_hash(path)``: A1111's ``Lora hashes`` value: first 12 hex of the ``sshs_model_hash`` metadata
  if present, else of the addnet hash (safetensors) or whole-file sha256 (other formats).
- ``embedding_short_hash(path)``: A1111's ``TI hashes`` value: first 12 hex of the whole-file sha256.

Hashing a 2 GB checkpoint takes seconds, so results are kept in ``hashes.json`` in the cache folder
(``$EXPRESSIONGRID_CACHE_DIR``, else ``$XDG_CACHE_HOME/expressiongrid``, else ``~/.cache/expressiongrid``).
An entry is reused only while the file's size and modification time (ns) are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from expressiongrid.errors import CharacterError

_CHUNK = 1 << 20
_lock = threading.Lock()


def cache_dir() -> Path:
    """The folder for expressiongrid's caches (created on first write)."""
    env = os.environ.get("EXPRESSIONGRID_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "expressiongrid"


def _cache_file() -> Path:
    return cache_dir() / "hashes.json"


def _read_cache() -> dict:
    try:
        with _cache_file().open(encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        # A missing or damaged cache only costs a re-hash; never fail a run over it.
        return {}


def _write_cache(data: dict) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new cache, never half
    except OSError:
        pass  # read-only cache folder: hashing still works, just uncached


def _stat_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise CharacterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _cached(path: Path, kind: str, compute) -> str:
    key, size, mtime = _stat_key(Path(path))
    with _lock:
        entry = _read_cache().get(key)
        if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime and kind in entry:
            return entry[kind]
    value = compute(Path(path))
    with _lock:
        data = _read_cache()
        entry = data.get(key)
        if not entry or entry.get("size") != size or entry.get("mtime_ns") != mtime:
            entry = {"size": size, "mtime_ns": mtime}
        entry[kind] = value
        data[key] = entry
        _write_cache(data)
    return value


def _hash_range(path: Path, start: int = 0) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            for block in iter(lambda: fh.read(_CHUNK), b""):
                h.update(block)
    except OSError as exc:
        raise CharacterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 (64 hex digits) of the file, read now (for small files not worth a cache entry)."""
    return _hash_range(Path(path))


def sha256(path: str | os.PathLike) -> str:
    """Full sha256 (64 hex digits) of the file, cached by path, size and modification time."""
    return _cached(Path(path), "sha256", _hash_range)


def autov2(path: str | os.PathLike) -> str:
    """A1111's "Model hash" / civitai's AutoV2: the first 10 hex digits of the file's sha256."""
    return sha256(path)[:10]


def autov1(path: str | os.PathLike) -> str:
    """A1111's old model hash (still in old infotexts and checkpoint titles): 8 hex digits of the sha256 of the
    64 KiB at offset 1 MiB."""

    def compute(p: Path) -> str:
        try:
            with p.open("rb") as fh:
                fh.seek(0x100000)
                return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
        except OSError as exc:
            raise CharacterError(f"cannot read {p}: {exc.strerror or exc}") from exc

    return _cached(Path(path), "autov1", compute)


def addnet_hash(path: str | os.PathLike) -> str:
    """sha256 of a safetensors file's tensor data (everything after the 8-byte length and the JSON header)."""

    def compute(p: Path) -> str:
        from expressiongrid.characters.formats import read_safetensors_header

        header = read_safetensors_header(p)
        return _hash_range(p, header.data_start)

    return _cached(Path(path), "addnet", compute)


def lora_short_hash(path: str | os.PathLike) -> str:
    """A1111's LoRA short hash (12 hex) as written in ``Lora hashes``."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from expressiongrid.characters.formats import read_safetensors_header

        meta = read_safetensors_header(path).metadata
        stored = str(meta.get("sshs_model_hash") or "").strip()
        if stored:
            return stored[:12]
        return addnet_hash(path)[:12]
    return sha256(path)[:12]


def embedding_short_hash(path: str | os.PathLike) -> str:
    """A1111's textual-inversion short hash (12 hex) as written in ``TI hashes``."""
    return sha256(path)[:12]
