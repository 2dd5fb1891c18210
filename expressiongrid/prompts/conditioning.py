"""Prompt text -> the conditioning tensors the denoiser reads at each model call (CLIP, torch).

``PromptEncoder.encode_schedules(prompts, num_calls)`` turns a batch of prompts (one per image row) into

* ``table [n_entries, 77*k, C]``: every distinct schedule text encoded once (chunked, weighted, clip-skipped),
* ``index [rows, num_calls]``: which table entry each row uses at each model call (A1111's rule,
  :func:`~expressiongrid.prompts.schedule_index_for_call`),

so the denoising loop gathers ``table[index[:, i]]`` at call ``i`` with no per-row Python.

What "encoded together" means (A1111's "Original" emphasis): A1111 encodes all schedule texts of one prompt
(one row's prompt, or one ``AND`` part of it) as one batch, and restores the mean of each 77-token chunk over
that whole batch. So emphasis in one schedule text slightly rescales the other texts *of the same row*, and a
text with fewer chunks than another of its row gets encoded empty chunks (``[start, end x 76]``) appended.
Rows never influence each other. The same text can therefore need different tensors in two rows; it gets
one table entry per distinct tensor (rows without emphasis and equal chunk counts share entries).

Rows whose texts have fewer chunks than the longest are padded the way A1111 stacks a batch: by repeating
the last token vector.

Raw text-encoder outputs are computed in batches of a fixed number of 77-token rows, so a row's vectors
never depend on which other rows happen to be encoded with it (a batched matmul may round differently at
another batch size). That makes them cacheable: an :class:`EncodingCache` keeps them across batches and columns for as
long as the text encoder's weights and embedding rows are the same (the ``state`` the caller names), and a
cached run, a resumed run and an uncached run encode bit for bit alike.

torch is imported lazily; import this module only where prompts are encoded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from expressiongrid.errors import UsageError
from expressiongrid.prompts.attention import is_break, parse_attention
from expressiongrid.prompts.calls import schedule_index_for_call
from expressiongrid.prompts.chunking import CHUNK_LENGTH, ChunkedPrompt, Embedding, chunk_fragments
from expressiongrid.prompts.emphasis import apply_emphasis, check_emphasis_mode
from expressiongrid.prompts.multicond import split_and as split_and_parts
from expressiongrid.prompts.schedule import get_schedule


@dataclass
class ScheduledConditioning:
    """Conditioning for a batch of rows over ``num_calls`` model calls.

    - ``table``: ``[n_entries, 77*k, C]`` in the text encoder's dtype and device.
    - ``index``: ``LongTensor [rows, num_calls]`` into ``table``.
    - ``texts``: the schedule text of each table entry (a text appears twice only when emphasis coupling
      made its tensors differ between rows, see the module docstring).
    - ``schedules``: each row's ``[(end_step, text), ...]`` (of its first ``AND`` part with ``split_and``).
    - ``part_index`` / ``part_weights``: only with ``split_and=True``: ``[rows, parts, num_calls]`` and
      ``[rows, parts]`` (A1111's composable diffusion: the denoised result is
      ``uncond + sum_k weight_k * cfg * (cond_k - uncond)``); padding parts have weight 0.
      ``index`` is then ``part_index[:, 0]``.
    """

    table: object  # torch.Tensor
    index: object  # torch.LongTensor
    texts: list[str]
    schedules: list[list[tuple[int, str]]] = field(default_factory=list)
    part_index: object | None = None
    part_weights: object | None = None

    @property
    def num_calls(self) -> int:
        return int(self.index.shape[1])

    def for_call(self, call_index: int):
        """The ``[rows, 77*k, C]`` conditioning of model call ``call_index``."""
        return self.table[self.index[:, call_index]]


def _final_layer_norm(text_encoder):
    # transformers 5 flattens CLIPTextModel (no .text_model); older versions nest it.
    norm = getattr(text_encoder, "final_layer_norm", None)
    if norm is None:
        norm = text_encoder.text_model.final_layer_norm
    return norm


TEXT_BATCH = 8  # rows per text-encoder call (fixed, see PromptEncoder._run_text_encoder)


class EncodingCache:
    """Raw text-encoder outputs (``[77, C]`` per 77-token row), kept across batches and columns.

    A row's vectors depend on the text encoder's weights and, when the row holds textual-inversion vector
    ids, on the vectors registered at those ids. The caller names both with :meth:`scope`:
    ``weights`` (None for the model's own weights; anything hashable that differs whenever a LoRA changed
    the text encoder) and ``embeddings`` (what is registered at which ids). Rows without embedding ids are
    shared by every scope with the same ``weights``. Least recently used rows are dropped beyond
    ``max_rows`` (SD1.5: 118 KB per row in fp16).
    """

    def __init__(self, max_rows: int = 1024):
        self.max_rows = max_rows
        self._rows: OrderedDict[Hashable, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def scope(self, weights: Hashable = None, embeddings: Hashable = None) -> "_CacheScope":
        return _CacheScope(self, weights, embeddings)

    def __len__(self) -> int:
        return len(self._rows)

    def _get(self, key: Hashable):
        value = self._rows.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._rows.move_to_end(key)
        return value

    def _put(self, key: Hashable, value) -> None:
        self._rows[key] = value
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)


@dataclass(frozen=True)
class _CacheScope:
    """One text-encoder state's view of an :class:`EncodingCache`."""

    cache: EncodingCache
    weights: Hashable
    embeddings: Hashable

    def key(self, clip_skip: int, row: tuple[int, ...], uses_embeddings: bool) -> tuple:
        return (clip_skip, self.weights, self.embeddings if uses_embeddings else None, row)

    def get(self, key: tuple):
        return self.cache._get(key)

    def put(self, key: tuple, vectors) -> None:
        self.cache._put(key, vectors)


class PromptEncoder:
    """Encode A1111-syntax prompts with a CLIP text encoder the way A1111 does.

    - ``tokenizer`` / ``text_encoder``: a ``CLIPTokenizer`` and ``CLIPTextModel`` (SD1.5 layout).
    - ``clip_skip``: 1 uses the last layer; N > 1 uses the N-th layer from the end, then the final layer norm.
    - ``emphasis``: "Original" (default), "No norm", "Ignore" or "None" (see :mod:`~expressiongrid.prompts.emphasis`).
    - ``embeddings``: textual inversion, ``{trigger_token_id: [vector_token_ids, ...]}``; the trigger is
      replaced by all its vectors, kept whole within one 75-token chunk.
    - ``comma_padding_backtrack``: A1111's "Prompt word wrap length limit" (20; 0 turns it off).
    - ``cache``: an :meth:`EncodingCache.scope` naming the text encoder's current state; without one the
      encoder keeps its own rows (shared by its calls only).
    """

    def __init__(
        self,
        tokenizer,
        text_encoder,
        clip_skip: int = 1,
        emphasis: str = "Original",
        embeddings: dict[int, list[int]] | None = None,
        comma_padding_backtrack: int = 20,
        cache: _CacheScope | None = None,
    ):
        if int(clip_skip) < 1:
            raise UsageError(f"clip skip must be 1 or more (got {clip_skip}); 1 means the last layer")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = int(clip_skip)
        self.emphasis = check_emphasis_mode(emphasis)
        self.comma_padding_backtrack = comma_padding_backtrack
        vocab = tokenizer.get_vocab()
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.comma = vocab.get(",</w>")
        self.embeddings = [
            Embedding(trigger, (int(trigger),), tuple(int(i) for i in vectors))
            for trigger, vectors in (embeddings or {}).items()
        ]
        self._chunk_cache: dict[str, ChunkedPrompt] = {}
        self._rows = cache if cache is not None else EncodingCache(max_rows=1 << 30).scope()
        self._embedding_ids = frozenset(int(i) for e in self.embeddings for i in (*e.trigger, *e.vector_ids))

    # -- text -> chunks (pure Python apart from the tokenizer) --------------------------------------
    def fragments(self, text: str) -> list[tuple[str, float]]:
        """The weighted fragments of ``text`` under this encoder's emphasis mode."""
        if self.emphasis == "None":
            return [(text, 1.0)]
        return parse_attention(text)

    def chunk(self, text: str) -> ChunkedPrompt:
        """Tokenize ``text`` fragment by fragment and cut it into 77-token chunks."""
        cached = self._chunk_cache.get(text)
        if cached is not None:
            return cached
        fragments = self.fragments(text)
        words = [t for t, w in fragments if not is_break((t, w))]
        ids_list = iter(
            self.tokenizer(words, truncation=False, add_special_tokens=False, verbose=False)["input_ids"] if words else []
        )
        tokenized = [(None if is_break((t, w)) else next(ids_list), w) for t, w in fragments]
        chunked = chunk_fragments(
            tokenized,
            bos=self.bos,
            eos=self.eos,
            comma=self.comma,
            embeddings=self.embeddings,
            comma_padding_backtrack=self.comma_padding_backtrack,
        )
        for c in chunked.chunks:
            if len(c.tokens) != CHUNK_LENGTH + 2:
                raise UsageError(
                    f"a textual-inversion embedding in {text!r} has more than {CHUNK_LENGTH} vectors and cannot fit "
                    "in one 75-token chunk; use an embedding with fewer vectors"
                )
        self._chunk_cache[text] = chunked
        return chunked

    # -- chunks -> tensors ---------------------------------------------------------------------------
    def _run_text_encoder(self, token_rows: list[tuple[int, ...]]) -> dict:
        """Raw (unweighted) hidden states ``[77, C]`` for each distinct 77-token row, cached by state.

        Rows not cached yet go through the text encoder in batches of exactly ``TEXT_BATCH`` rows (the
        last one filled up with empty chunks): a fixed shape, so a row's vectors are the same bits
        whatever else is encoded with it and wherever it sits in the batch."""
        import torch

        keys = {row: self._rows.key(self.clip_skip, row, not self._embedding_ids.isdisjoint(row)) for row in token_rows}
        out: dict[tuple[int, ...], object] = {}
        missing = []
        for row in token_rows:
            vectors = self._rows.get(keys[row])
            if vectors is None:
                missing.append(row)
            else:
                out[row] = vectors
        device = self.text_encoder.device if missing else None
        norm = _final_layer_norm(self.text_encoder) if self.clip_skip > 1 and missing else None
        filler = self._empty_chunk()[0]
        for start in range(0, len(missing), TEXT_BATCH):
            rows = missing[start:start + TEXT_BATCH]
            padded = rows + [filler] * (TEXT_BATCH - len(rows))
            with torch.no_grad():
                ids = torch.tensor(padded, dtype=torch.long, device=device)
                result = self.text_encoder(input_ids=ids, output_hidden_states=self.clip_skip > 1)
                z = result.last_hidden_state if norm is None else norm(result.hidden_states[-self.clip_skip])
            for row, vectors in zip(rows, z):
                vectors = vectors.clone()  # its own [77, C]: a view would keep the whole batch (filler too) alive
                out[row] = vectors
                self._rows.put(keys[row], vectors)
        return out

    def _empty_chunk(self) -> tuple[tuple[int, ...], list[float]]:
        return (self.bos, *([self.eos] * (CHUNK_LENGTH + 1))), [1.0] * (CHUNK_LENGTH + 2)

    def encode_groups(self, groups: Sequence[Sequence[str]]) -> list[dict[str, object]]:
        """Encode texts in groups that are "encoded together" (A1111's batch for one prompt's schedule).

        Returns, per group, ``{text: tensor [77*k_group, C]}`` where ``k_group`` is the group's largest
        chunk count. A group may repeat texts (a schedule alternating between two texts): repeats weigh
        in the emphasis mean exactly as in A1111.
        """
        import torch

        if len(groups) == 0:
            return []
        distinct = list(dict.fromkeys(t for group in groups for t in group))
        chunked = {t: self.chunk(t) for t in distinct}
        empty_tokens, empty_mults = self._empty_chunk()
        rows = list(dict.fromkeys([empty_tokens, *(tuple(c.tokens) for t in distinct for c in chunked[t].chunks)]))
        raw = self._run_text_encoder(rows)
        dtype = raw[empty_tokens].dtype
        device = raw[empty_tokens].device

        results: list[dict[str, object]] = []
        for group in groups:
            n_chunks = max(len(chunked[t].chunks) for t in group)
            per_text: dict[str, list] = {t: [] for t in group}
            for k in range(n_chunks):
                members = []
                for t in group:
                    chunks = chunked[t].chunks
                    members.append(
                        (tuple(chunks[k].tokens), chunks[k].multipliers) if k < len(chunks) else (empty_tokens, empty_mults)
                    )
                z = torch.stack([raw[tokens] for tokens, _ in members])
                mults = torch.tensor([m for _, m in members], dtype=dtype, device=device)
                weighted = apply_emphasis(z, mults, "Ignore" if self.emphasis == "None" else self.emphasis)
                seen: set[str] = set()
                for t, vectors in zip(group, weighted):
                    if t not in seen:
                        seen.add(t)
                        per_text[t].append(vectors)
            results.append({t: torch.cat(parts) for t, parts in per_text.items()})
        return results

    def encode(self, texts: Sequence[str]):
        """Encode each text on its own (no schedule) into ``[len(texts), 77*k, C]``, padded A1111-style."""
        encoded = self.encode_groups([[t] for t in texts])
        return _pad_stack([e[t] for e, t in zip(encoded, texts)])

    def encode_schedules(
        self, prompts: Sequence[str], num_calls: int, split_and: bool = False
    ) -> ScheduledConditioning:
        """Encode a batch of prompts (one per row) for ``num_calls`` model calls.

        ``num_calls`` is :func:`~expressiongrid.prompts.total_model_calls` of the pass (2 x steps for
        second-order samplers). Prompts must already have their ``<lora:...>`` tags removed (positive
        prompts) -- negative prompts keep them, as in A1111. ``split_and=True`` splits positive prompts on
        ``AND`` (composable diffusion); negative prompts are encoded without splitting.
        """
        import torch

        if num_calls < 1:
            raise UsageError(f"num_calls must be at least 1 (got {num_calls})")
        if len(prompts) == 0:
            raise UsageError("encode_schedules needs at least one prompt (one per image row)")
        row_parts: list[list[tuple[str, float]]] = []
        for prompt in prompts:
            if split_and:
                texts, weights = split_and_parts(prompt)
                row_parts.append(list(zip(texts, weights)))
            else:
                row_parts.append([(prompt, 1.0)])

        part_texts = list(dict.fromkeys(text for parts in row_parts for text, _ in parts))
        schedules = {text: get_schedule(text, num_calls) for text in part_texts}
        groups = list(dict.fromkeys(tuple(t for _, t in schedules[text]) for text in part_texts))
        encoded = self.encode_groups(groups)

        entries: list = []
        entry_texts: list[str] = []
        by_text: dict[str, list[int]] = {}
        entry_of: dict[tuple[tuple[str, ...], str], int] = {}
        for group, tensors in zip(groups, encoded):
            for text, tensor in tensors.items():
                # Share an entry when the tensor is identical (the usual case: no emphasis coupling).
                found = next((i for i in by_text.get(text, []) if _same(entries[i], tensor)), None)
                if found is None:
                    found = len(entries)
                    entries.append(tensor)
                    entry_texts.append(text)
                    by_text.setdefault(text, []).append(found)
                entry_of[(group, text)] = found

        def call_indices(text: str) -> list[int]:
            schedule = schedules[text]
            group = tuple(t for _, t in schedule)
            return [entry_of[(group, schedule[schedule_index_for_call(schedule, c)][1])] for c in range(num_calls)]

        n_parts = max(len(parts) for parts in row_parts) if row_parts else 1
        part_index = []
        part_weights = []
        for parts in row_parts:
            rows_idx = [call_indices(text) for text, _ in parts]
            weights = [w for _, w in parts]
            rows_idx += [rows_idx[0]] * (n_parts - len(parts))
            weights += [0.0] * (n_parts - len(parts))
            part_index.append(rows_idx)
            part_weights.append(weights)

        table = _pad_stack(entries)
        device = table.device
        part_index_t = torch.tensor(part_index, dtype=torch.long, device=device).reshape(len(prompts), n_parts, num_calls)
        result = ScheduledConditioning(
            table=table,
            index=part_index_t[:, 0].contiguous(),
            texts=entry_texts,
            schedules=[schedules[parts[0][0]] for parts in row_parts],
        )
        if split_and:
            result.part_index = part_index_t
            result.part_weights = torch.tensor(part_weights, dtype=table.dtype, device=device)
        return result


def _same(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def _pad_stack(tensors: list):
    """Stack ``[L_i, C]`` tensors, padding shorter ones by repeating their last vector (A1111's stack_conds)."""
    import torch

    length = max(t.shape[0] for t in tensors)
    padded = [t if t.shape[0] == length else torch.cat([t, t[-1:].expand(length - t.shape[0], -1)]) for t in tensors]
    return torch.stack(padded)
