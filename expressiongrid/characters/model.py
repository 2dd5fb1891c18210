"""What a grid column tests: a character with its LoRAs and embeddings (plain dataclasses, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LoraRef:
    """A LoRA file and its strengths. ``name`` is what ``<lora:NAME:..>`` and ``Lora hashes`` show."""

    path: Path
    unet_weight: float = 1.0
    te_weight: float = 1.0
    name: str = ""

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.name:
            self.name = self.path.stem


@dataclass
class EmbeddingRef:
    """A textual-inversion file and the token that stands for it in prompts (lower case).

    ``name`` is what A1111 calls it (the file stem): the name in ``TI hashes`` and civitai's resources.
    """

    path: Path
    token: str = ""
    name: str = ""

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.name:
            self.name = self.path.stem
        if not self.token:
            from expressiongrid.characters.tokens import default_token

            self.token = default_token(self.path.stem)


@dataclass
class Character:
    """One column of the grid: ``text`` replaces the character placeholder in the prompt."""

    id: str
    label: str
    loras: list[LoraRef] = field(default_factory=list)
    embeddings: list[EmbeddingRef] = field(default_factory=list)
    text: str = ""
    source: dict | None = None
    file: Path | None = None  # the character file (or bare model file) it was read from
    tags: dict[str, str] = field(default_factory=dict)  # [tags] of the character file: group, creator
    # What its files ask for that this tool does not do, one line each, for the plan to say.
    notes: tuple[str, ...] = ()

    @classmethod
    def reference(cls, text: str = "1girl", label: str = "reference") -> "Character":
        """The reference column: no files, the study's default text for the placeholder."""
        return cls(id="reference", label=label, text=text)

    @property
    def kind(self) -> str:
        """"reference", "lora", "embedding" or "mixed" (for listings and labels)."""
        if self.loras and self.embeddings:
            return "mixed"
        if self.loras:
            return "lora"
        if self.embeddings:
            return "embedding"
        return "reference"

    def files(self) -> list[Path]:
        """Every model file this character needs."""
        return [r.path for r in self.loras] + [e.path for e in self.embeddings]
