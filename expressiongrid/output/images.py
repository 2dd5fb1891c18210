"""Image writers that carry A1111 metadata, written atomically.

* PNG: a ``parameters`` text chunk (tEXt, or iTXt when the text is not Latin-1), as A1111 writes it.
* JPEG / WebP: EXIF UserComment with the ``UNICODE\\0`` prefix and UTF-16 big-endian text, the form A1111
  writes (piexif's "unicode" encoding) and civitai decodes.

Every writer writes to a temporary file in the destination folder and renames it into place, so a crash
never leaves a half-written image under the final name (the run store counts files as done by name); the
file then has the permissions the user's umask gives, like any file the user creates.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import Callable

from PIL import Image, PngImagePlugin

__all__ = [
    "CIVITAI_MAX_BYTES",
    "JPEG_MAX_SIDE",
    "WEBP_MAX_SIDE",
    "atomic_write",
    "current_umask",
    "encode_user_comment",
    "decode_user_comment",
    "read_parameters",
    "save_image",
    "save_jpeg",
    "save_png",
    "save_upload_copy",
    "save_webp",
]

JPEG_MAX_SIDE = 65_535
WEBP_MAX_SIDE = 16_383
CIVITAI_MAX_BYTES = 50 * 1000 * 1000  # civitai's per-image upload limit (50 MB)

_EXIF_IFD = 0x8769
_MAX_EXIF_BYTES = 65_533  # a JPEG APP1 segment: 65,535 bytes including its own length field
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass  # not Linux: fall back to setting and restoring it
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside `path`, fsync it, then rename it to `path`.

    The file gets the permissions a plain ``open(path, "w")`` would give (0644 under umask 022), not the
    owner-only 0600 of a temporary file, so web servers and other users can read images and reports.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes: ``UNICODE\\0`` + UTF-16BE, as A1111 and civitai read them."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def decode_user_comment(data: bytes | str) -> str:
    """Inverse of `encode_user_comment`; also reads ASCII and unprefixed comments."""
    if isinstance(data, str):
        return data
    if data.startswith(_UNICODE_PREFIX):
        body = data[len(_UNICODE_PREFIX):]
        # Some writers use little-endian with a byte-order mark; A1111 writes big-endian without one.
        if body.startswith(b"\xff\xfe"):
            return body[2:].decode("utf-16-le", errors="replace")
        if body.startswith(b"\xfe\xff"):
            body = body[2:]
        return body.decode("utf-16-be", errors="replace")
    if data.startswith(_ASCII_PREFIX):
        return data[len(_ASCII_PREFIX):].decode("ascii", errors="replace").rstrip("\x00")
    return data.rstrip(b"\x00").decode("utf-8", errors="replace")


def _exif_bytes(parameters: str | None) -> bytes:
    """A minimal EXIF block: IFD0 -> Exif IFD -> UserComment (type UNDEFINED, as the EXIF spec says).

    Built by hand because Pillow's writer stores raw bytes as type BYTE, which strict readers skip.
    """
    if not parameters:
        return b""
    payload = encode_user_comment(parameters)
    ifd0 = 8
    exif_ifd = ifd0 + 2 + 12 + 4
    data_at = exif_ifd + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", ifd0)
    tiff += struct.pack(">HHHII", 1, _EXIF_IFD, 4, 1, exif_ifd) + struct.pack(">I", 0)
    tiff += struct.pack(">HHHII", 1, _USER_COMMENT, 7, len(payload), data_at) + struct.pack(">I", 0)
    block = b"Exif\x00\x00" + tiff + payload
    if len(block) > _MAX_EXIF_BYTES:
        logging.getLogger("expressiongrid.output").warning(
            "the parameters (%d characters) are too long for JPEG/WebP metadata (64 KiB): this file is written "
            "without them (the PNG has them)", len(parameters))
        return b""
    return block


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def save_png(path: str | os.PathLike, image: Image.Image, parameters: str | None = None, *, compress_level: int = 6) -> Path:
    """Write `image` as PNG with the A1111 ``parameters`` text chunk, atomically."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    return atomic_write(path, lambda fh: image.save(fh, format="PNG", pnginfo=info, compress_level=compress_level))


def _check_side(image: Image.Image, limit: int, fmt: str) -> None:
    if max(image.size) > limit:
        from expressiongrid.errors import ExpressionGridError

        raise ExpressionGridError(
            f"{image.width}x{image.height} is larger than {fmt} allows ({limit} px a side); "
            "split the grid into pages (compose_grid does this) or save it as PNG"
        )


def save_jpeg(path: str | os.PathLike, image: Image.Image, parameters: str | None = None, *, quality: int = 92) -> Path:
    """Write a JPEG with the parameters as EXIF UserComment, atomically."""
    _check_side(image, JPEG_MAX_SIDE, "JPEG")
    exif = _exif_bytes(parameters)
    return atomic_write(path, lambda fh: _rgb(image).save(fh, format="JPEG", quality=quality, exif=exif))


def save_webp(path: str | os.PathLike, image: Image.Image, parameters: str | None = None, *, quality: int = 90, lossless: bool = False) -> Path:
    """Write a WebP with the parameters as EXIF UserComment, atomically."""
    _check_side(image, WEBP_MAX_SIDE, "WebP")
    exif = _exif_bytes(parameters)
    return atomic_write(
        path, lambda fh: _rgb(image).save(fh, format="WEBP", quality=quality, lossless=lossless, exif=exif)
    )


def save_image(path: str | os.PathLike, image: Image.Image, parameters: str | None = None) -> Path:
    """Write by extension: ``.png``, ``.jpg``/``.jpeg`` or ``.webp``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return save_png(path, image, parameters)
    if suffix in (".jpg", ".jpeg"):
        return save_jpeg(path, image, parameters)
    if suffix == ".webp":
        return save_webp(path, image, parameters)
    from expressiongrid.errors import UsageError

    raise UsageError(f"{path}: unsupported image type {suffix!r}; use .png, .jpg or .webp")


def read_parameters(path: str | os.PathLike) -> str | None:
    """The A1111 ``parameters`` text of an image file (PNG text chunk or EXIF UserComment), or None.

    A file that is not an image Pillow can open is a ``UsageError`` naming it."""
    from PIL import UnidentifiedImageError

    from expressiongrid.errors import UsageError

    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
            if text:
                return text
            comment = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{path}: cannot read the image ({exc})") from exc
    if comment:
        return decode_user_comment(comment)
    return None


def _encode(image: Image.Image, fmt: str, quality: int, parameters: str | None) -> bytes:
    buf = io.BytesIO()
    kwargs = {"quality": quality, "exif": _exif_bytes(parameters)}
    _rgb(image).save(buf, format="JPEG" if fmt == "jpeg" else "WEBP", **kwargs)
    return buf.getvalue()


def save_upload_copy(
    path: str | os.PathLike,
    image: Image.Image,
    parameters: str | None = None,
    *,
    fmt: str = "jpeg",
    max_bytes: int = CIVITAI_MAX_BYTES,
    max_side: int | None = None,
) -> Path:
    """Write an upload-sized JPEG or WebP: within the format's side limit, `max_side` and `max_bytes`.

    Lowers the quality first (92 -> 70), then scales the image down until the encoded file fits; the
    size is measured on the real encoded bytes, so the copy is never over the limit.
    """
    fmt = fmt.lower().replace("jpg", "jpeg")
    if fmt not in ("jpeg", "webp"):
        from expressiongrid.errors import UsageError

        raise UsageError(f"upload copy format {fmt!r}: use jpeg or webp")
    side_limit = JPEG_MAX_SIDE if fmt == "jpeg" else WEBP_MAX_SIDE
    if max_side:
        side_limit = min(side_limit, max_side)
    if parameters and not _exif_bytes(parameters):
        parameters = None  # too long for EXIF (warned once): encode the sizes below without it
    work = image
    if max(work.size) > side_limit:
        scale = side_limit / max(work.size)
        work = work.resize((max(1, int(work.width * scale)), max(1, int(work.height * scale))), Image.LANCZOS)
    while True:
        for quality in (92, 85, 78, 70):
            data = _encode(work, fmt, quality, parameters)
            if len(data) <= max_bytes:
                return atomic_write(path, lambda fh: fh.write(data))
        if max(work.size) <= 64:
            from expressiongrid.errors import ExpressionGridError

            raise ExpressionGridError(f"cannot fit an upload copy of {path} into {max_bytes} bytes")
        work = work.resize((max(1, int(work.width * 0.8)), max(1, int(work.height * 0.8))), Image.LANCZOS)
