"""A pure-Python CLIP tokenizer for counting tokens without importing transformers or torch.

``prompt explain`` must start in well under a second; building transformers' ``CLIPTokenizer`` alone costs
more than a second. This module reproduces its steps (NFC, whitespace collapse, lower-case, CLIP's split
pattern, byte-level symbols, BPE with ``</w>`` word ends) from the same ``vocab.json``/``merges.txt``, and
the tests check it gives the same ids as transformers. It is used only for counting and display; images
are always encoded with the real tokenizer.
"""

from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path

SD15_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "engine" / "configs" / "sd15" / "tokenizer"

_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's printable stand-in character for each byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class PureClipTokenizer:
    """Token ids of text, as ``CLIPTokenizer(..., add_special_tokens=False)`` gives them."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], name: str = "clip"):
        import regex

        self.name = name
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_symbols = _bytes_to_unicode()
        self.split = regex.compile(_SPLIT, regex.IGNORECASE)
        self.whitespace = regex.compile(r"\s+")
        self.bos = vocab["<|startoftext|>"]
        self.eos = vocab["<|endoftext|>"]
        self.comma = vocab.get(",</w>")
        self.unk = vocab.get("<|endoftext|>")
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[str]:
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                rank = self.ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, i)
            if best is None:
                break
            pair = (symbols[best[1]], symbols[best[1] + 1])
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without start/end tokens."""
        text = self.whitespace.sub(" ", unicodedata.normalize("NFC", text)).lower()
        ids: list[int] = []
        for piece in self.split.findall(text):
            cached = self._cache.get(piece)
            if cached is None:
                word = "".join(self.byte_symbols[b] for b in piece.encode("utf-8"))
                cached = [self.vocab.get(sym, self.unk) for sym in self._bpe(word)]
                self._cache[piece] = cached
            ids.extend(cached)
        return ids


@lru_cache(maxsize=2)
def load_tokenizer(kind: str = "sd15") -> PureClipTokenizer:
    """The SD1.5 CLIP tokenizer shipped with the package (``"sd15"``) or the built-in tiny model's (``"tiny"``).

    Falls back to the tiny tokenizer when the SD1.5 vocabulary files are not installed.
    """
    if kind == "sd15" and (SD15_TOKENIZER_DIR / "vocab.json").exists():
        vocab = json.loads((SD15_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
        lines = (SD15_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines[1:] if line.strip() and not line.startswith("#version")]
        return PureClipTokenizer(vocab, [m for m in merges if len(m) == 2], name="sd15")
    from expressiongrid.tiny import tiny_vocab

    vocab, merge_lines = tiny_vocab()
    return PureClipTokenizer(dict(vocab), [tuple(m.split(" ")) for m in merge_lines], name="tiny")
