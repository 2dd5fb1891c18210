"""Small helpers shared by the CLI modules (printing JSON and user text, custom parameter types)."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import click

from expressiongrid.text import BIDI_CONTROLS


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


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "]")


def terminal_safe(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``, ``\\u202e``), so what a user wrote in a
    label or a file name can neither move the cursor, recolour or retitle the terminal, break a message
    into several lines, nor reorder the line (direction controls). Only the CLI prints, so only the CLI
    needs this."""
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
    """Progress on stderr (count, rate, ETA), started when the first total is known; a callable progress
    callback ``(done, total, note=None)``. The note (a column name, "loading model ...") is user text, so it
    is shown terminal-safe; set every time so one that is not repeated does not linger.

    On a terminal it is a tqdm bar. Anywhere else (``nohup ... > run.out``, a queue's child, a CI log) a
    bar's carriage-return redraws would pile up into one endless line, so it prints a plain line at most
    every ``interval`` seconds and one at the end. ``EXPRESSIONGRID_NO_PROGRESS=1`` turns both off."""

    def __init__(self, unit: str, interval: float = 60.0):
        self.unit = unit
        self.interval = interval
        self.bar = None
        self.lines: _ProgressLines | None = None

    def __call__(self, done: int, total: int, note: str | None = None) -> None:
        if os.environ.get("EXPRESSIONGRID_NO_PROGRESS") == "1":
            return
        note = terminal_safe(note or "")[:40]
        if self.bar is None and self.lines is None:
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
            else:
                self.lines = _ProgressLines(self.unit, total, done, self.interval)
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(done - self.bar.n)
        else:
            self.lines.update(done, note)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.lines is not None:
            self.lines.close()


class _ProgressLines:
    """The log-file form of `ProgressBar`: ``progress: 120/3600 img (3%), 1.20 img/s, about 49:47 left``."""

    def __init__(self, unit: str, total: int, done: int, interval: float):
        import time

        self.unit, self.total, self.interval = unit, total, interval
        self.start_done, self.done, self.note = done, done, ""
        self.started = self.printed = time.monotonic()
        self.last_printed_done = done  # where this run starts (cells done before): nothing to say yet

    def update(self, done: int, note: str) -> None:
        import time

        self.done, self.note = done, note
        now = time.monotonic()
        if done >= self.total or now - self.printed >= self.interval:
            self._print(now)

    def close(self) -> None:
        import time

        if self.last_printed_done != self.done:  # stopped early (Ctrl-C, an error): say how far it got
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        from tqdm import tqdm

        if self.last_printed_done == self.done:
            return
        self.printed, self.last_printed_done = now, self.done
        elapsed = now - self.started
        made = self.done - self.start_done
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        line = f"progress: {self.done}/{self.total} {self.unit}{pct}"
        if made > 0 and elapsed > 0:
            rate = made / elapsed
            line += f", {rate:.2f} {self.unit}/s"
            if self.done < self.total:
                line += f", about {tqdm.format_interval((self.total - self.done) / rate)} left"
            else:
                line += f", {tqdm.format_interval(elapsed)} in all"
        if self.note and self.done < self.total:
            line += f" ({self.note})"
        click.echo(line, err=True)
