"""Characters: LoRAs and textual-inversion embeddings as grid columns.

Public API (see docs/internals.md and docs/characters.md): ``Character``, ``LoraRef``, ``EmbeddingRef``,
``load_character``, ``check_characters``, ``CharacterActivator`` / ``ActiveCharacter``, ``inspect_file``,
``list_characters`` and the ``hashes`` module. Importing this package does not import torch.
"""

from expressiongrid.characters import hashes
from expressiongrid.characters.activation import ActiveCharacter, CharacterActivator
from expressiongrid.characters.check import check_characters, inspect_file
from expressiongrid.characters.files import list_characters, load_character
from expressiongrid.characters.model import Character, EmbeddingRef, LoraRef

__all__ = [
    "ActiveCharacter",
    "Character",
    "CharacterActivator",
    "EmbeddingRef",
    "LoraRef",
    "check_characters",
    "hashes",
    "inspect_file",
    "list_characters",
    "load_character",
]
