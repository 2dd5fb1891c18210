"""Embedding tokens: chosen so they cannot collide with CLIP words or prefix one another.

A1111 finds embeddings by their token ids anywhere in the prompt, and Hugging Face tokenizers match added
tokens anywhere in the text, so a token that is a prefix of another (``anna`` / ``anna2``) or a vocabulary
word (``smile``) would silently change other prompts. Mixed case is refused because CLIP lower-cases prompts.
"""

from __future__ import annotations

import re

from expressiongrid.errors import CharacterError

_VALID = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def default_token(stem: str) -> str:
    """A token from a file name: lower case, letters, digits, ``_`` and ``-`` only."""
    token = re.sub(r"[^a-z0-9_\-]+", "-", stem.lower()).strip("-_")
    return token or "embedding"


def validate_token(token: str, where: str = "") -> None:
    """Refuse tokens that CLIP would mangle (upper case, spaces, punctuation)."""
    where = f"{where}: " if where else ""
    if token != token.lower():
        raise CharacterError(f"{where}embedding token {token!r} must be lower case (CLIP lower-cases prompts); use {token.lower()!r}")
    if not _VALID.match(token):
        raise CharacterError(
            f"{where}embedding token {token!r} may contain only lower-case letters, digits, '_' and '-' "
            "and must start with a letter or digit"
        )


def in_vocabulary(tokenizer, token: str) -> bool:
    """True if the token is already a word of the tokenizer (it would hijack that word)."""
    vocab = tokenizer.get_vocab()
    if token in vocab or token + "</w>" in vocab:
        return True
    ids = tokenizer(token, add_special_tokens=False).input_ids
    return len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None)


def token_problems(requests: list[tuple[str, str]], tokenizer=None) -> list[str]:
    """Every problem with the embedding tokens of a run; ``requests`` are ``(file, token)`` pairs.

    The same file under the same token is one embedding. Tokens are never renamed behind the user's back
    (prompts are planned before the model loads): a collision is a problem that names both sides and says
    how to fix it. Vocabulary collisions are checked only when a tokenizer is given.
    """
    problems: list[str] = []
    seen: dict[str, str] = {}  # token -> file
    for file, token in dict.fromkeys(requests):
        try:
            validate_token(token, file)
        except CharacterError as exc:
            problems.append(str(exc))
            continue
        fix = 'set another token in a character file ([[embedding]] token = "...")'
        if token in seen and seen[token] != file:
            problems.append(f"{file}: embedding token {token!r} is also the token of {seen[token]}; {fix}")
            continue
        for other, other_file in seen.items():
            if other != token and (other.startswith(token) or token.startswith(other)):
                problems.append(
                    f"{file}: embedding token {token!r} and {other!r} of {other_file} are prefixes of one "
                    f"another, so prompts would match the wrong one; {fix}"
                )
        if tokenizer is not None and in_vocabulary(tokenizer, token):
            problems.append(f"{file}: embedding token {token!r} is a word the model already knows; {fix}")
        seen.setdefault(token, file)
    return problems
