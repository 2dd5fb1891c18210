"""Token chunking: weighted fragments -> 77-token chunks (start + 75 + end), as A1111 builds them.

Each fragment of :func:`parse_attention` is tokenized on its own (tokens never merge across fragments).
Tokens fill chunks of 75; a full chunk is closed, moving the words after the last comma to the next chunk
when that comma is close enough to the end (``comma_padding_backtrack``, A1111's "Prompt word wrap length
limit", default 20). A bare ``BREAK`` closes the chunk early. A textual-inversion embedding's vectors are
kept whole inside one chunk. Pure Python: token ids in, token ids out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

CHUNK_LENGTH = 75


@dataclass
class Chunk:
    """One 77-token chunk. ``fixes`` lists ``(offset, embedding_key)`` of embeddings placed in it; the offset
    counts from the first token after the start token (A1111's convention)."""

    tokens: list[int]
    multipliers: list[float]
    fixes: list[tuple[int, Hashable]] = field(default_factory=list)
    length: int = 0  # tokens used before the end-of-chunk padding


@dataclass
class ChunkedPrompt:
    chunks: list[Chunk]
    token_count: int  # tokens used, as A1111's token counter reports them

    @property
    def target_token_count(self) -> int:
        """A1111's "N/75" counter denominator: the count rounded up to whole chunks."""
        return target_token_count(self.token_count)


def target_token_count(token_count: int) -> int:
    return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


@dataclass(frozen=True)
class Embedding:
    """A textual-inversion embedding as the chunker sees it: the token ids that trigger it and the ids
    placed into the chunk for its vectors (one per vector)."""

    key: Hashable
    trigger: tuple[int, ...]
    vector_ids: tuple[int, ...]


def index_embeddings(embeddings: Sequence[Embedding]) -> dict[int, list[Embedding]]:
    """Embeddings by first trigger id, longest trigger first (A1111 matches the longest sequence)."""
    index: dict[int, list[Embedding]] = {}
    for emb in embeddings:
        if emb.trigger:
            index.setdefault(emb.trigger[0], []).append(emb)
    for candidates in index.values():
        candidates.sort(key=lambda e: len(e.trigger), reverse=True)
    return index


def _embedding_at(ids: Sequence[int], pos: int, index: Mapping[int, list[Embedding]]) -> Embedding | None:
    for emb in index.get(ids[pos], ()):
        if tuple(ids[pos : pos + len(emb.trigger)]) == emb.trigger:
            return emb
    return None


def chunk_fragments(
    fragments: Sequence[tuple[Sequence[int] | None, float]],
    *,
    bos: int,
    eos: int,
    comma: int | None,
    embeddings: Sequence[Embedding] = (),
    comma_padding_backtrack: int = 20,
    pad: int | None = None,
) -> ChunkedPrompt:
    """Chunk tokenized fragments. A fragment whose ids are ``None`` is a ``BREAK`` marker.

    ``pad`` fills unused positions (SD1.5 pads with the end token, the default).
    """
    pad = eos if pad is None else pad
    index = index_embeddings(embeddings)
    chunks: list[Chunk] = []
    chunk: list[int] = []
    mults: list[float] = []
    fixes: list[tuple[int, Hashable]] = []
    last_comma = -1
    token_count = 0

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, mults, fixes, last_comma, token_count
        token_count += len(chunk) if is_last else CHUNK_LENGTH
        used = len(chunk)
        fill = CHUNK_LENGTH - used
        if fill > 0:
            chunk = chunk + [pad] * fill
            mults = mults + [1.0] * fill
        chunks.append(Chunk([bos, *chunk, eos], [1.0, *mults, 1.0], fixes, used))
        chunk, mults, fixes, last_comma = [], [], [], -1

    for ids, weight in fragments:
        if ids is None:
            next_chunk()
            continue
        pos = 0
        while pos < len(ids):
            token = ids[pos]
            if token == comma:
                last_comma = len(chunk)
            elif (
                comma_padding_backtrack
                and len(chunk) == CHUNK_LENGTH
                and last_comma != -1
                and CHUNK_LENGTH - last_comma <= comma_padding_backtrack
            ):
                # Move the words after the last comma to the next chunk so a phrase is not cut in two.
                cut = last_comma + 1
                moved_tokens, moved_mults = chunk[cut:], mults[cut:]
                chunk, mults = chunk[:cut], mults[:cut]
                next_chunk()
                chunk, mults = moved_tokens, moved_mults
            if len(chunk) == CHUNK_LENGTH:
                next_chunk()
            emb = _embedding_at(ids, pos, index) if index else None
            if emb is None:
                chunk.append(token)
                mults.append(weight)
                pos += 1
                continue
            if len(chunk) + len(emb.vector_ids) > CHUNK_LENGTH:
                next_chunk()
            fixes.append((len(chunk), emb.key))
            chunk.extend(emb.vector_ids)
            mults.extend([weight] * len(emb.vector_ids))
            pos += len(emb.trigger)

    if chunk or not chunks:
        next_chunk(is_last=True)
    return ChunkedPrompt(chunks, token_count)
