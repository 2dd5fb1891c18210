"""Per-column activation: a character's LoRAs written into the weights, its embeddings registered, and the
exact base model restored afterwards.

Why in place: an unfused peft adapter costs ~12 % per step and ``fuse_lora``/``unfuse_lora`` drift the base
weights (see DESIGN.md). Here every touched layer's clean weight is copied once; a column writes
``base + sum(weight * scale * up @ down)`` into the layer and leaving copies the clean weight back, so
A -> B -> A is bit-identical and the model equals the original bit for bit after the last column. No module
is replaced, so ``torch.compile`` graphs stay valid.

Embeddings: the character's tokens are added to the tokenizer and its vectors appended to the token
embedding for the column only; leaving restores the tokenizer state and the original embedding module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.characters import hashes
from expressiongrid.characters.check import family_problem
from expressiongrid.characters.embeddings import EmbeddingFile, load_embedding
from expressiongrid.characters.lora import (
    FAMILY_NAMES,
    SGM_BLOCK_NAMES,
    LoraFile,
    delta_shape,
    diffusers_module_paths,
    fits,
    load_lora,
    lora_delta,
)
from expressiongrid.characters.model import Character
from expressiongrid.characters.sidecars import read_sidecars
from expressiongrid.characters.tokens import token_problems
from expressiongrid.errors import CharacterError


@dataclass
class ActiveCharacter:
    """What the runner needs while a character's column is generated."""

    character: Character
    embeddings: dict[int, list[int]] = field(default_factory=dict)  # trigger token id -> ids of all its vectors
    tokens: dict[str, list[int]] = field(default_factory=dict)  # token text -> ids of all its vectors
    lora_hashes: dict[str, str] = field(default_factory=dict)  # name as in <lora:NAME> -> A1111 short hash
    ti_hashes: dict[str, str] = field(default_factory=dict)  # A1111 name (file stem) -> A1111 short hash
    resources: list[dict] = field(default_factory=list)  # civitai-style resource list
    text_encoder_changed: bool = False  # True: a LoRA changed the text encoder, re-encode this column's prompts

    def text_state(self) -> tuple:
        """``(weights, embeddings)`` naming the text encoder's state while this character is active, for
        ``EncodingCache.scope``: weights are None unless a LoRA changed the text encoder; embeddings say
        which vectors sit at which token ids."""
        weights = None
        if self.text_encoder_changed:
            weights = tuple((str(ref.path), ref.te_weight) for ref in self.character.loras if ref.te_weight)
        paths = {ref.token: str(ref.path) for ref in self.character.embeddings}
        embeddings = tuple(sorted((token, tuple(ids), paths.get(token, "")) for token, ids in self.tokens.items()))
        return weights, embeddings or None

    def expand_ids(self, ids: list[int]) -> list[int]:
        """Token ids with every embedding trigger replaced by all its vector ids (for a plain encoder)."""
        out: list[int] = []
        for i in ids:
            out.extend(self.embeddings.get(i, [i]))
        return out


@dataclass
class _BoundModule:
    layer: object  # torch.nn.Module with .weight
    key: str  # "unet:<path>" or "te:<path>"
    module: object  # lora.LoraModule


def _clean(name: str) -> str:
    # A1111 removes ':' and ',' from names in "Lora hashes"/"TI hashes".
    return name.replace(":", "").replace(",", "")


class CharacterActivator:
    """Loads every character's files once (``prepare``) and activates one character at a time."""

    def __init__(self, loaded_model):
        self.model = loaded_model
        self.pipe = loaded_model.pipe
        self.family = getattr(loaded_model, "family", "sd15") or "sd15"
        self._loras: dict[Path, LoraFile] = {}
        self._bound: dict[Path, list[_BoundModule]] = {}
        self._embeddings: dict[Path, EmbeddingFile] = {}
        self._base: dict[str, object] = {}  # layer key -> clean copy of its weight
        self._layers: dict[str, object] | None = None
        self._active: Character | None = None

    # --- loading -------------------------------------------------------------------------------------------

    def _layer_maps(self) -> dict[str, object]:
        """Layer lookup by every name a file may use: dotted paths and kohya's underscored names."""
        if self._layers is None:
            import torch

            layers: dict[str, object] = {}
            kinds = (torch.nn.Linear, torch.nn.Conv2d)
            for name, mod in self.pipe.unet.named_modules():
                name = name.removeprefix("_orig_mod.")  # a torch.compile'd UNet wraps the original
                if isinstance(mod, kinds):
                    layers[f"unet:{name}"] = mod
                    layers["lora_unet_" + name.replace(".", "_")] = f"unet:{name}"
            for name, mod in self.pipe.text_encoder.named_modules():
                if isinstance(mod, kinds):
                    # transformers 5 flattened CLIPTextModel (no .text_model); kohya names keep "text_model_"
                    path = name.removeprefix("_orig_mod.").removeprefix("text_model.")
                    layers[f"te:{path}"] = mod
                    layers["lora_te_text_model_" + path.replace(".", "_")] = f"te:{path}"
            self._layers = layers
        return self._layers

    def _bind(self, lora: LoraFile) -> list[_BoundModule]:
        layers = self._layer_maps()
        text_width = self.pipe.text_encoder.config.hidden_size
        info = {"kind": "lora", "family": lora.family, "width": lora.width,
                "family_reason": f"text width {lora.width}" if lora.width else "its module names"}
        problem = family_problem(lora.path, info, self.family, text_width)
        if problem:
            raise CharacterError(problem)
        if lora.format == "kohya" and any(b in m.name for m in lora.modules for b in SGM_BLOCK_NAMES):
            # Original-SD block names (input_blocks_4_1_...): renumbering needs this UNet's layout.
            renamed = diffusers_module_paths({m.name: (m.down, m.up) for m in lora.modules
                                              if m.kind == "lora" and m.mid is None}, self.pipe.unet.config)
            for m in lora.modules:
                m.converted = renamed.get(m.name, m.converted)
        bound, missing = [], []
        for m in lora.modules:
            if m.dotted:
                key = f"{m.target}:{m.name}"
            elif m.converted in layers and fits(m, layers[m.converted].weight.shape):
                key = m.converted  # diffusers' converter named it and the layer agrees
            else:
                key = layers.get(m.name)  # kohya's rule: the module path with '.' -> '_'
            layer = layers.get(key) if isinstance(key, str) else None
            if layer is None:
                missing.append(m.name)
                continue
            if not fits(m, layer.weight.shape):
                raise CharacterError(
                    f"{lora.path}: module {m.name} (weight change {delta_shape(m)}) does not fit the model's layer "
                    f"{tuple(layer.weight.shape)}; this LoRA was made for another model than this "
                    f"{FAMILY_NAMES.get(self.family, self.family)} one"
                )
            bound.append(_BoundModule(layer, key, m))
        if missing:
            raise CharacterError(
                f"{lora.path}: {len(missing)} of {len(lora.modules)} LoRA modules match no layer of this model "
                f"(e.g. {missing[0]!r}); it was made for another model or uses an unsupported naming"
            )
        import torch

        for b in bound:  # factors live beside their layer, in float32: deltas are summed before one cast
            dev = b.layer.weight.device
            b.module.set_tensors({k: v.to(dev, torch.float32) for k, v in b.module.tensors().items()})
        return bound

    def _load_lora(self, path: Path) -> None:
        if path not in self._loras:
            lora = load_lora(path)
            self._bound[path] = self._bind(lora)
            self._loras[path] = lora

    def _load_embedding(self, path: Path) -> None:
        if path not in self._embeddings:
            emb = load_embedding(path)
            text_width = self.pipe.text_encoder.get_input_embeddings().weight.shape[1]
            info = {"kind": "embedding", "family": emb.family, "width": emb.width,
                    "family_reason": f"vector width {emb.width}"}
            problem = family_problem(path, info, self.family, text_width)
            if problem:
                raise CharacterError(problem)
            self._embeddings[path] = emb

    def prepare(self, chars: list[Character]) -> None:
        """Load every file of every character once and check tokens; raises ``CharacterError`` on problems."""
        problems = token_problems([(str(e.path), e.token) for ch in chars for e in ch.embeddings], self.pipe.tokenizer)
        if problems:
            raise CharacterError(problems[0] if len(problems) == 1 else f"{len(problems)} embedding token problems: "
                                 + "; ".join(problems))
        for ch in chars:
            for ref in ch.loras:
                self._load_lora(Path(ref.path))
            for ref in ch.embeddings:
                self._load_embedding(Path(ref.path))

    # --- activation ----------------------------------------------------------------------------------------

    def _write_loras(self, ch: Character, touched: list[str]) -> bool:
        """Write ``base + deltas`` into every layer the character's LoRAs touch; keys go into ``touched``
        before each write so a failure half-way still restores everything."""
        import torch

        deltas: dict[str, list] = {}
        layers: dict[str, object] = {}
        for ref in ch.loras:
            for b in self._bound[Path(ref.path)]:
                weight = ref.unet_weight if b.module.target == "unet" else ref.te_weight
                if weight == 0:
                    continue
                deltas.setdefault(b.key, []).append((weight, b.module))
                layers[b.key] = b.layer
        te_changed = any(k.startswith("te:") for k in deltas)
        with torch.no_grad():
            for key, items in deltas.items():
                layer = layers[key]
                if key not in self._base:
                    self._base[key] = layer.weight.detach().clone()
                base = self._base[key]
                touched.append(key)
                total = base.to(torch.float32, copy=True)
                for weight, module in items:
                    total.add_(lora_delta(module, base.shape, base=base), alpha=weight)
                layer.weight.copy_(total)  # copy_ casts to the layer's dtype
        return te_changed

    def _restore(self, keys: list[str]) -> None:
        import torch

        layers = self._layer_maps()
        with torch.no_grad():
            for key in keys:
                layers[key].weight.copy_(self._base[key])

    def _add_embeddings(self, ch: Character):
        """Register the character's tokens; returns (state to restore, trigger map, token map)."""
        import torch

        if not ch.embeddings:
            return None, {}, {}
        tokenizer = self.pipe.tokenizer
        te = self.pipe.text_encoder
        backend = getattr(tokenizer, "_tokenizer", None)
        saved_tok = backend.to_str() if backend is not None else None
        saved_dict = None if backend is not None else {k: _copy(v) for k, v in vars(tokenizer).items()}
        old_embedding = te.get_input_embeddings()
        old_vocab = te.config.vocab_size
        tokens = [e.token for e in ch.embeddings]
        tokenizer.add_tokens(tokens)
        trigger_ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        rows = old_embedding.weight.shape[0]
        start = max(rows, max(trigger_ids) + 1)
        extra = sum(self._embeddings[Path(e.path)].n_vectors - 1 for e in ch.embeddings)
        # Built from an explicit tensor: nn.Embedding's own init would draw from the global RNG.
        table = torch.zeros(start + extra, old_embedding.weight.shape[1],
                            device=old_embedding.weight.device, dtype=old_embedding.weight.dtype)
        new = torch.nn.Embedding(table.shape[0], table.shape[1], _weight=table).requires_grad_(False)
        trigger_map: dict[int, list[int]] = {}
        token_map: dict[str, list[int]] = {}
        with torch.no_grad():
            new.weight[:rows].copy_(old_embedding.weight)
            next_id = start
            for ref, tid in zip(ch.embeddings, trigger_ids):
                vectors = self._embeddings[Path(ref.path)].vectors.to(new.weight.device, new.weight.dtype)
                ids = [tid] + list(range(next_id, next_id + vectors.shape[0] - 1))
                next_id += vectors.shape[0] - 1
                new.weight[ids] = vectors
                trigger_map[tid] = ids
                token_map[ref.token] = ids
        te.set_input_embeddings(new)
        te.config.vocab_size = new.weight.shape[0]
        return (saved_tok, saved_dict, old_embedding, old_vocab), trigger_map, token_map

    def _remove_embeddings(self, state) -> None:
        if state is None:
            return
        saved_tok, saved_dict, old_embedding, old_vocab = state
        tokenizer = self.pipe.tokenizer
        if saved_tok is not None:
            from tokenizers import Tokenizer

            tokenizer._tokenizer = Tokenizer.from_str(saved_tok)
        else:
            tokenizer.__dict__.clear()
            tokenizer.__dict__.update(saved_dict)
        self.pipe.text_encoder.set_input_embeddings(old_embedding)
        self.pipe.text_encoder.config.vocab_size = old_vocab

    def _resources(self, ch: Character) -> list[dict]:
        # The character's own [source] civitai id names its one file; any file may also have Civitai Helper's
        # NAME.civitai.info beside it.
        version = (ch.source or {}).get("civitai") if len(ch.files()) == 1 else None
        out = []
        for ref in ch.loras:
            item = {"type": "lora", "name": ref.name, "weight": ref.unet_weight, "hash": hashes.autov2(ref.path)}
            _link(item, version, ref.path)
            out.append(item)
        for ref in ch.embeddings:
            item = {"type": "embed", "name": ref.name, "hash": hashes.autov2(ref.path)}
            _link(item, version, ref.path)
            out.append(item)
        return out

    @contextlib.contextmanager
    def activate(self, ch: Character):
        """Make ``ch`` part of the model for one column; yields an ``ActiveCharacter``.

        Leaving (also by an exception) restores the exact base weights, tokenizer and embedding table.
        """
        if self._active is not None:
            raise CharacterError(f"character {self._active.id!r} is still active; columns cannot be nested")
        self.prepare([ch])  # no-op for files already loaded by prepare()
        touched: list[str] = []
        state = None
        self._active = ch
        try:
            te_changed = self._write_loras(ch, touched)
            state, trigger_map, token_map = self._add_embeddings(ch)
            yield ActiveCharacter(
                character=ch,
                embeddings=trigger_map,
                tokens=token_map,
                lora_hashes={_clean(r.name): hashes.lora_short_hash(r.path) for r in ch.loras},
                ti_hashes={_clean(e.name): hashes.embedding_short_hash(e.path) for e in ch.embeddings},
                resources=self._resources(ch),
                text_encoder_changed=te_changed,
            )
        finally:
            self._restore(touched)
            self._remove_embeddings(state)
            self._active = None

    @contextlib.contextmanager
    def activate_together(self, chars: list[Character]):
        """Several characters that leave the UNet and text-encoder weights alone (embeddings only, no
        LoRA), active at once so their columns can share one batch with the reference column.

        Their tokens are registered together, as A1111 keeps every embedding loaded. Yields
        ``(shared, per_character)``: the combined ``ActiveCharacter`` (its ``embeddings`` are for the
        prompt encoder) and one ``ActiveCharacter`` per character, in order, for that column's metadata.
        """
        from expressiongrid.errors import CharacterError

        with_loras = [ch.id for ch in chars if ch.loras]
        if with_loras:
            raise CharacterError(f"characters {with_loras} have LoRAs: their columns need their own weights")
        tokens = [e.token for ch in chars for e in ch.embeddings]
        if len({t.lower() for t in tokens}) != len(tokens):
            raise CharacterError(f"embedding tokens {tokens} repeat: these columns cannot be active together")
        merged = Character(id="+".join(ch.id for ch in chars), label=", ".join(ch.label for ch in chars),
                           embeddings=[e for ch in chars for e in ch.embeddings])
        with self.activate(merged) as shared:
            per_character = []
            for ch in chars:
                own = {e.token: shared.tokens[e.token] for e in ch.embeddings}
                per_character.append(ActiveCharacter(
                    character=ch,
                    embeddings={ids[0]: ids for ids in own.values()},
                    tokens=own,
                    ti_hashes={_clean(e.name): hashes.embedding_short_hash(e.path) for e in ch.embeddings},
                    resources=self._resources(ch),
                ))
            yield shared, per_character


def _copy(value):
    import copy

    try:
        return copy.deepcopy(value)
    except Exception:  # unpicklable helpers (locks, C objects) are shared, not copied
        return value


def _link(item: dict, version: int | None, path) -> None:
    """Add civitai's ``modelVersionId`` to a resource when it is known."""
    if version is None:
        version = read_sidecars(path).civitai_version_id
    if version is not None:
        item["modelVersionId"] = version
