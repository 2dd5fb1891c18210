"""What a cell activates: the LoRAs and embeddings its prompt and its column's character name.

A1111 reads extra-network tags in the positive prompt wherever they come from (the study prompt, an
expression, a character's text, a Prompt S/R value): ``<lora:NAME:W>``, ``<lora:NAME:TE:UNET>`` and
``<lyco:...>`` switch that LoRA on for the image at that weight, NAME being a file stem in the LoRA folders.
Embedding words (file stems in the embeddings folders) are switched on wherever they occur in the positive
or negative prompt. The same rules here, per cell:

* a tag naming one of the column character's LoRAs means that file; any other name is looked up in the
  configured LoRA folders; a name found nowhere is a problem of the study (reported before anything loads);
* the tag's weights are the weights used (so a Prompt S/R from ``<lora:x:1>`` to ``<lora:x:0.5>`` sweeps
  the weight); a character LoRA that no tag names keeps the weight of its character file;
* a ``LoRA weight`` axis value multiplies every LoRA of the cell;
* the prompt written into the image's metadata carries the weights actually used: tags are rewritten
  when an axis changed their weight, and a character LoRA no tag names is added as a tag, so the text
  pasted into A1111 with the same files installed makes the same LoRA set.

Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from expressiongrid.study.lookup import embedding_words, lookup_lora
from expressiongrid.characters.model import Character, EmbeddingRef, LoraRef
from expressiongrid.config import Config
from expressiongrid.prompts import extract_networks

UNSUPPORTED_KINDS = {"hypernet": "hypernetworks"}


@dataclass
class CellNetworks:
    """The files one cell activates (weights as used) and its prompt as written into the metadata."""

    prompt: str
    loras: list[LoraRef] = field(default_factory=list)
    embeddings: list[EmbeddingRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def activation(self, character: Character | None) -> Character | None:
        """The character the runner activates for this cell (None when nothing is switched on)."""
        if not self.loras and not self.embeddings:
            return None
        if character is None:
            return Character(id="prompt", label="prompt", loras=list(self.loras), embeddings=list(self.embeddings))
        return Character(id=character.id, label=character.label, loras=list(self.loras),
                         embeddings=list(self.embeddings), text=character.text, source=character.source,
                         file=character.file)


def a1111_text(text: str, embeddings) -> str:
    """``text`` with each embedding's token written as A1111 names the embedding (its file stem).

    A character file may give an embedding another token than its file name (to avoid a collision here);
    A1111 only knows the file name, so the metadata's prompt says that, and pasting it into A1111 with the
    same files installed switches the same embeddings on.
    """
    for ref in embeddings:
        if ref.token != ref.name.lower():
            text = re.sub(rf"(?<![a-z0-9]){re.escape(ref.token)}(?![a-z0-9])", lambda _m: ref.name, text,
                          flags=re.IGNORECASE)
    return text


def format_weight(weight: float) -> str:
    """A weight as A1111 users write it: ``0.5``, ``1``, ``0.6`` (not ``0.6000000000000001``)."""
    return f"{round(weight, 6):g}"


def lora_tag(name: str, te: float, unet: float, kind: str = "lora") -> str:
    weights = format_weight(te) if te == unet else f"{format_weight(te)}:{format_weight(unet)}"
    return f"<{kind}:{name}:{weights}>"


def resolve_networks(prompt: str, negative_prompt: str, character: Character | None, lora_weight: float,
                     config: Config) -> CellNetworks:
    """Resolve a cell's tags and embedding words (see the module docstring)."""
    from expressiongrid.characters.tokens import validate_token
    from expressiongrid.errors import CharacterError

    clean, tags = extract_networks(prompt)
    own = {ref.name: ref for ref in (character.loras if character is not None else [])}
    out = CellNetworks(prompt=prompt)
    named: set[str] = set()
    replacements: list[tuple[int, int, str]] = []
    for tag in tags:
        if tag.kind in UNSUPPORTED_KINDS:
            out.problems.append(f"{tag.raw}: {UNSUPPORTED_KINDS[tag.kind]} are not supported by expressiongrid; "
                                "remove the tag (a LoRA version of it can be used with <lora:NAME:W>)")
            continue
        if tag.kind != "lora":
            continue  # unknown kinds do nothing in A1111 either; prompts.network_warnings says so
        if tag.name in own:
            path = own[tag.name].path
        else:
            path, problem = lookup_lora(config, tag.name, tag.raw)
            if problem:
                out.problems.append(problem)
                continue
        named.add(tag.name)
        te, unet = tag.te_weight * lora_weight, tag.unet_weight * lora_weight
        out.loras.append(LoraRef(path, unet_weight=unet, te_weight=te, name=tag.name))
        if lora_weight != 1.0:
            kind = tag.raw[1:].split(":", 1)[0]
            replacements.append((tag.position, len(tag.raw), lora_tag(tag.name, te, unet, kind)))
    written = prompt
    for start, length, text in reversed(replacements):
        written = written[:start] + text + written[start + length:]
    for ref in own.values():
        if ref.name in named:
            continue
        te, unet = ref.te_weight * lora_weight, ref.unet_weight * lora_weight
        out.loras.append(LoraRef(ref.path, unet_weight=unet, te_weight=te, name=ref.name))
        written = f"{written} {lora_tag(ref.name, te, unet)}"  # a space: stripping it leaves no extra token
    out.prompt = written

    out.embeddings = list(character.embeddings) if character is not None else []
    taken = {e.token for e in out.embeddings} | {e.path for e in out.embeddings}
    for word, path in embedding_words(config, clean + "\n" + negative_prompt):
        token = path.stem.lower()
        if token in taken or path in taken:
            continue
        taken |= {token, path}
        try:
            validate_token(token, str(path))
        except CharacterError as exc:
            out.problems.append(f"'{word}' names an embedding: {exc}; rename the file (lower-case letters, "
                                "digits, '_' and '-')")
            continue
        out.embeddings.append(EmbeddingRef(path, token=token, name=path.stem))
    return out
