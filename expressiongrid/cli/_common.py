"""Small helpers shared by the CLI modules (printing JSON, custom parameter types)."""

from __future__ import annotations

import json
from typing import Any

import click


def echo_json(data: Any) -> None:
    """Print `data` as indented JSON (dataclasses and paths are converted)."""
    import dataclasses
    from pathlib import Path

    def default(obj):
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, (set, tuple)):
            return list(obj)
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=default))
