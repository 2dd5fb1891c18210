"""LoRAs and embeddings named in prompts, found in the configured model folders the way A1111 finds them.

A1111 names a LoRA or an embedding after its file name without the extension (``anna_v2.safetensors`` is
``<lora:anna_v2:0.8>``, ``EasyNegative.pt`` is the word ``EasyNegative``), anywhere under its folders. The
folders and the name lookup are the user configuration's (``expressiongrid.config``); this module adds what
prompts need on top: which embedding words a text contains, globs over the folders, and the message for a
name that names no file. Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from pathlib import Path

from expressiongrid.config import SUFFIXES, Config
from expressiongrid.errors import UsageError


def find_lora(config: Config, name: str) -> Path | None:
    """The LoRA file ``<lora:NAME:..>`` names (file stem, as in A1111), or None; two candidates raise UsageError."""
    return config.find_file("loras", name)


def missing_lora(config: Config, name: str, tag: str) -> str:
    """The problem message for a tag whose name is no LoRA file: the names looked for and the folders searched."""
    looked = "/".join(name + suffix for suffix in SUFFIXES["loras"])
    near = next((p.stem for p in config.files("loras") if p.stem.lower() == name.lower()), None)
    hint = f"; did you mean {near!r}?" if near else ""
    return (f"{tag}: no LoRA file named {name!r} ({looked}): {config.describe_search('loras')}{hint}; "
            "put the file there or fix the name (`expressiongrid config show` lists the folders)")


def lookup_lora(config: Config, name: str, tag: str) -> tuple[Path | None, str | None]:
    """``(file, None)`` for a tag's LoRA, or ``(None, problem)`` when the name names no file or several."""
    try:
        path = find_lora(config, name)
    except UsageError as exc:
        return None, f"{tag}: {exc}"
    return (path, None) if path is not None else (None, missing_lora(config, name, tag))


@lru_cache(maxsize=8)
def _embedding_pattern(files: tuple[Path, ...]) -> tuple[re.Pattern | None, dict[str, Path]]:
    by_lower: dict[str, Path] = {}
    for path in files:
        by_lower.setdefault(path.stem.lower(), path)
    if not by_lower:
        return None, {}
    words = sorted(by_lower, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, words)) + r")(?![a-z0-9])", re.IGNORECASE), by_lower


def embedding_words(config: Config, text: str) -> list[tuple[str, Path]]:
    """``(word as written, file)`` for every configured embedding whose name occurs in ``text``, once each.

    CLIP lower-cases prompts and A1111 matches an embedding's tokens, so case does not matter; a name inside a
    longer word (``annaface2`` for ``annaface``) does not count.
    """
    pattern, by_lower = _embedding_pattern(tuple(config.files("embeddings")))
    if pattern is None:
        return []
    found: dict[Path, str] = {}
    for m in pattern.finditer(text):
        found.setdefault(by_lower[m.group(1).lower()], m.group(1))
    return [(word, path) for path, word in found.items()]


def glob_files(config: Config, kind: str, pattern: str) -> list[Path]:
    """Files of ``kind`` (``loras``, ``embeddings``) whose path below its folder, file name or stem matches ``pattern``."""
    folders = config.search_folders(kind)
    out = []
    for path in config.files(kind):
        rel = next((path.relative_to(f).as_posix() for f in folders if path.is_relative_to(f)), path.name)
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in (rel, path.name, path.stem)):
            out.append(path)
    return out
