"""The run's log file: ``<out_dir>/run.log``, what to read in the morning when a night run went wrong.

One line per event, each with a UTC timestamp. A run writes a header (command line, versions of torch,
diffusers, transformers, CUDA and the GPU name, and the resolved study as JSON), then every warning and
failure: our own ``expressiongrid`` logger, Python ``warnings`` (deprecations, peft's LoRA warnings) and the
warnings of diffusers/transformers/peft. The file is appended to, so a resumed run adds to the story of
the same folder instead of erasing the night's first attempt. Under accelerate every process writes to
the same file with its rank in each line (appends of whole lines do not interleave mid-line).

Only standard ``logging`` is used: library code calls ``logging.getLogger("expressiongrid...")`` as usual
and the run log picks it up while it is open.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

LOG_NAME = "run.log"
# Third-party loggers whose warnings belong in the run log (their INFO chatter does not).
CAPTURED_LOGGERS = ("diffusers", "transformers", "peft", "accelerate", "py.warnings")

logger = logging.getLogger("expressiongrid")


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def environment_versions() -> dict[str, str]:
    """Versions that decide whether a night's images can be reproduced: Python, torch, diffusers, CUDA, GPU.

    Imports torch (call it when a run starts, not from `--help` paths). Never raises: a missing package
    is reported as "not installed".
    """
    from importlib import metadata

    def version_of(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "expressiongrid": version_of("expressiongrid"),
        "torch": version_of("torch"),
        "diffusers": version_of("diffusers"),
        "transformers": version_of("transformers"),
        "peft": version_of("peft"),
        "accelerate": version_of("accelerate"),
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda or "none (CPU build of torch)"
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            info["gpu"] = f"{torch.cuda.get_device_name(index)} (cuda:{index} of {torch.cuda.device_count()})"
        else:
            info["gpu"] = "none (running on CPU)"
    except Exception as exc:  # a broken CUDA driver must not stop the run from logging that fact
        info["cuda"] = f"unavailable ({exc.__class__.__name__}: {exc})"
        info["gpu"] = "unknown"
    return info


class _LogFileHandler(logging.FileHandler):
    """A FileHandler that stops writing when the file cannot be written (a full disk) instead of printing
    logging's own "--- Logging error ---" traceback for every later line. The failure the run hits on the
    same disk (a cell or run.sqlite write) is what reaches the user, as one line."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.broken = True


class RunLog:
    """An open run log. Use as a context manager, or call `close()`; closing detaches every handler.

    `process` (e.g. "1/2" under accelerate) is written into each line so shards can be told apart.
    """

    def __init__(self, out_dir: str | os.PathLike, process: str | None = None, level: int = logging.INFO):
        self.path = Path(out_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.warnings_seen = 0
        self.failures_seen = 0
        where = f" [process {process}]" if process else ""
        self._handler = _LogFileHandler(self.path, mode="a", encoding="utf-8", delay=False)
        self._handler.setFormatter(_UTCFormatter(f"%(asctime)s %(levelname)-7s{where} %(name)s: %(message)s"))
        self._handler.setLevel(level)
        self._handler.addFilter(self._count)
        self._attached: list[tuple[logging.Logger, int]] = []
        ours = logging.getLogger("expressiongrid")
        self._attach(ours, level)
        for name in CAPTURED_LOGGERS:
            self._attach(logging.getLogger(name), logging.WARNING)
        # Python warnings still go to the console as before, and also into the file.
        self._old_showwarning = warnings.showwarning
        warnings.showwarning = self._showwarning

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        logging.getLogger("py.warnings").warning(
            "%s: %s (%s:%s)", category.__name__, message, os.path.basename(str(filename)), lineno
        )
        self._old_showwarning(message, category, filename, lineno, file, line)

    def _count(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.failures_seen += 1
        elif record.levelno >= logging.WARNING:
            self.warnings_seen += 1
        return True

    def _attach(self, target: logging.Logger, level: int) -> None:
        self._attached.append((target, target.level))
        if target.level == logging.NOTSET or target.level > level:
            target.setLevel(level)
        target.addHandler(self._handler)

    # -- writing ----------------------------------------------------------------------------------
    def info(self, message: str, *args: Any) -> None:
        logger.info(message, *args)

    def warning(self, message: str, *args: Any) -> None:
        logger.warning(message, *args)

    def failure(self, message: str, *args: Any) -> None:
        """Log a failure (a cell, a column, a notification): level ERROR so it stands out in the file."""
        logger.error(message, *args)

    def header(self, *, study: Any = None, argv: list[str] | None = None,
               versions: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write the start-of-run block: command line, versions, and the resolved study as one JSON line."""
        from expressiongrid.run.notify import redact_argv

        logger.info("run started: %s", " ".join(redact_argv(argv if argv is not None else sys.argv)))
        for key, value in (versions if versions is not None else environment_versions()).items():
            logger.info("version %s: %s", key, value)
        for key, value in (extra or {}).items():
            logger.info("%s: %s", key, value)
        if study is not None:
            logger.info("resolved study: %s", json.dumps(study, ensure_ascii=False, sort_keys=True, default=str))

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        for target, old_level in self._attached:
            target.removeHandler(self._handler)
            target.setLevel(old_level)
        self._attached.clear()
        if warnings.showwarning == self._showwarning:
            warnings.showwarning = self._old_showwarning
        self._handler.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            logger.error("run stopped by %s: %s", exc.__class__.__name__, exc)
        elif isinstance(exc, KeyboardInterrupt):
            logger.warning("run interrupted; finished cells are kept, run the same command again to resume")
        self.close()


def open_run_log(out_dir: str | os.PathLike, process: str | None = None) -> RunLog:
    """Open (append to) ``<out_dir>/run.log`` and route warnings and failures into it until closed."""
    return RunLog(out_dir, process=process)
