"""Typed errors. Library code raises these; only the CLI turns them into one-line messages.

Every message should say what was wrong, where (file, line, column, cell), and what to do.
"""

from __future__ import annotations


class ExpressionGridError(Exception):
    """Base of every error a user can act on. The CLI prints `error: <message>` and exits 1."""

    exit_code = 1


class UsageError(ExpressionGridError):
    """Bad input given on the command line or in a file the user wrote (exit code 2)."""

    exit_code = 2


class PromptSyntaxError(UsageError, ValueError):
    """A prompt A1111 would reject. `position` is the 0-based character offset of the problem."""

    def __init__(self, message: str, position: int | None = None, text: str | None = None):
        self.position = position
        self.text = text
        if position is not None and "position" not in message:
            message = f"{message} (at position {position})"
        super().__init__(message)


class StudyError(UsageError):
    """A study file (or ad-hoc grid) is invalid. `problems` lists every problem found, not just the first."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


class ConfigError(UsageError):
    """The user configuration file (``expressiongrid config path``) is unreadable or has a bad value."""


class ModelError(ExpressionGridError):
    """A checkpoint, VAE or configuration could not be found or loaded."""


class CharacterError(ExpressionGridError):
    """A LoRA, embedding or character file is missing, corrupt, unsupported or of the wrong model family."""


class SamplerError(UsageError):
    """Unknown sampler name or an invalid sampler setting."""


class GenerationError(ExpressionGridError):
    """Generation failed for a cell (NaN images, out of memory at batch size 1, ...)."""


class StoreError(ExpressionGridError):
    """The run store (SQLite database / output folder) is unreadable or inconsistent."""


class NoRunError(StoreError, UsageError):
    """The folder given as a run folder holds no run (no ``run.sqlite``, or one with no run recorded yet):
    a usage error (exit code 2), since the user named the wrong folder or has not run the study there."""


class FetchError(ExpressionGridError):
    """Downloading a model from civitai or the Hugging Face hub failed."""


class AnalysisError(ExpressionGridError):
    """Face or image analysis cannot run (missing optional packages or models)."""


class QueueError(ExpressionGridError):
    """The study queue is unusable right now (another `queue run` holds it, unreadable database, ...)."""
