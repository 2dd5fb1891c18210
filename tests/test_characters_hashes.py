"""Hashes as A1111 and civitai compute them, and the cache keyed by path, size and modification time."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from expressiongrid.characters import hashes


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRESSIONGRID_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def lora(tmp_path):
    path = tmp_path / "char.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.arange(12.0).reshape(3, 4)}, str(path),
              metadata={"ss_output_name": "char"})
    return path


def test_sha256_and_autov2_are_the_whole_file(lora):
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()
    assert hashes.sha256(lora) == digest
    assert hashes.autov2(lora) == digest[:10]


def test_lora_short_hash_is_the_addnet_hash_of_the_data_after_the_header(lora):
    data = lora.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    expected = hashlib.sha256(data[8 + n:]).hexdigest()
    assert hashes.addnet_hash(lora) == expected
    assert hashes.lora_short_hash(lora) == expected[:12]
    assert hashes.lora_short_hash(lora) != hashes.sha256(lora)[:12]  # the header (metadata) is not hashed


def test_lora_short_hash_prefers_sshs_model_hash_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"sshs_model_hash": "0123456789abcdef" * 4})
    assert hashes.lora_short_hash(path) == "0123456789ab"


def test_pickled_files_use_the_whole_file(tmp_path):
    path = tmp_path / "e.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashes.lora_short_hash(path) == digest[:12]
    assert hashes.embedding_short_hash(path) == digest[:12]


def test_cache_is_keyed_by_path_size_and_mtime(lora, cache):
    first = hashes.sha256(lora)
    stored = json.loads((cache / "hashes.json").read_text())
    (entry,) = stored.values()
    assert entry["sha256"] == first and entry["size"] == lora.stat().st_size
    # Same size and mtime but other bytes: the cached value is used (this is what makes it fast) ...
    st = lora.stat()
    data = bytearray(lora.read_bytes())
    data[-1] ^= 0xFF
    lora.write_bytes(bytes(data))
    os.utime(lora, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashes.sha256(lora) == first
    # ... and a new modification time makes it hash again.
    os.utime(lora, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert hashes.sha256(lora) == hashlib.sha256(bytes(data)).hexdigest() != first


def test_a_damaged_cache_file_is_ignored(lora, cache):
    cache.mkdir(parents=True)
    (cache / "hashes.json").write_text("{not json")
    assert hashes.sha256(lora) == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert json.loads((cache / "hashes.json").read_text())  # rewritten whole
