"""Files the user names: file names made from user text (never a path, never empty), text files read safely."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from expressiongrid.errors import UsageError
from expressiongrid.limits import MAX_TEXT_FILE_BYTES


def safe_filename(text: str, fallback: str = "untitled", max_length: int = 80) -> str:
    """A file-name stem from `text`: letters, digits, ``.``, ``_`` and ``-`` kept, every other run of
    characters (slashes, colons, angle brackets, spaces, ...) becomes ``_``; no leading dots, so the result
    can never be ``..`` or a hidden file; at most `max_length` characters; `fallback` when nothing is left.

    Example: ``safe_filename("../../my study: v2")`` is ``"my_study_v2"``.
    """
    name = re.sub(r"[^\w.-]+", "_", str(text)).strip("._-")
    name = name[:max_length].rstrip("._-")
    return name or fallback


def read_text_file(path: str | os.PathLike, what: str = "file", error: type[Exception] = UsageError,
                   max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """The UTF-8 text of a file the user gave (a study, character or expression-set file), or ``error``.

    Refuses, with a one-line message naming the file, what would otherwise hang or fill memory: a FIFO
    or device (``/dev/zero``), a folder, a file over ``max_bytes``; and text that is not UTF-8 (a UTF-8
    byte-order mark is accepted). At most ``max_bytes + 1`` bytes are ever read.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder; give the {what} itself") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    # Checked on the descriptor before wrapping it: Linux opens a folder read-only, and os.fdopen then
    # raises a bare IsADirectoryError naming only the descriptor.
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a folder; give the {what} itself")
        raise error(f"{path}: not a regular file (a pipe or device); give the {what} itself")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes // (1024 * 1024)} MiB; a {what} is a small text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                    f"save the {what} as UTF-8") from None


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """Refuse an output folder a run could not use, before anything is loaded (``--dry-run`` included).

    A file where the folder, its ``cells``/``grids`` folders or its ``run.sqlite`` should be, and a folder
    on a read-only file system or without write permission, are each a one-line ``UsageError``.
    """
    out = Path(out_dir)
    try:
        os.stat(out)
    except (FileNotFoundError, NotADirectoryError):
        pass  # made by the run; a file on the way is refused below
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise UsageError(f"output folder {out}: {exc.strerror} for the file system (at most "
                         f"{_name_max(out)} characters per name): choose a shorter --out") from None
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file: give a folder with --out")
    for name in ("cells", "grids"):
        if (out / name).exists() and not (out / name).is_dir():
            raise UsageError(f"{out / name} is a file, but a run keeps its {name} there: move it away or use "
                             "another --out")
    if (out / "run.sqlite").exists() and not (out / "run.sqlite").is_file():
        raise UsageError(f"{out / 'run.sqlite'} is not a file: move it away or use another --out")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot make output folder {out}: {existing} is a file")
    why = unwritable(existing)
    if why:
        raise UsageError(f"output folder {out} cannot be written ({existing} {why}): choose another --out")
    return out


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be made in the existing ``folder`` ("is on a read-only file system", "is not
    writable"), or None when they can. Root passes permission checks, not a read-only mount: both are asked."""
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def _name_max(path: Path) -> int:
    """The longest file name the file system of ``path``'s nearest existing folder allows (255 if unknown)."""
    existing = path.absolute()
    while not os.path.isdir(existing) and existing.parent != existing:
        existing = existing.parent
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
