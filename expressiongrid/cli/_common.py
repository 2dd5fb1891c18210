"""Small helpers shared by the CLI modules (printing JSON and user text, custom parameter types)."""

from __future__ import annotations

import json
import os
import re
import sys
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``), so what a user wrote in a label or
    a file name can neither move the cursor, recolour or retitle the terminal, nor break a message
    into several lines. Only the CLI prints, so only the CLI needs this."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


def shell_word(text: object) -> str:
    """``text`` (a path, usually) as one word of a command line the user can paste: shell-quoted when it
    holds spaces or other special characters, then terminal-safe."""
    import shlex

    return terminal_safe(shlex.quote(str(text)))


def open_in_browser(url: str) -> None:
    """Open `url` in the user's default web browser (``--open``)."""
    import webbrowser

    webbrowser.open(url)


def serve_until_interrupted(server) -> None:
    """Serve until Ctrl+C; the server is closed either way."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl+C is how the user stops a local server
    finally:
        server.server_close()


class ProgressBar:
    """tqdm bar on stderr (count, rate, ETA), created when the first total is known; a callable progress
    callback ``(done, total, note=None)``. The note (a column name, "loading model ...") is user text, so it
    is shown terminal-safe; set every time so one that is not repeated does not linger."""

    def __init__(self, unit: str):
        self.unit = unit
        self.bar = None

    def __call__(self, done: int, total: int, note: str | None = None) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                            disable=os.environ.get("EXPRESSIONGRID_NO_PROGRESS") == "1")
        self.bar.set_postfix_str(terminal_safe(note or "")[:40], refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
