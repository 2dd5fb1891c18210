"""An image file as the measures read it: upright and 8-bit RGB, the way an image viewer shows it.

Photos from phones and cameras are often stored sideways with an EXIF Orientation tag that every viewer
applies; measured as stored, the face lies on its side and dlib's frontal detector finds none. Greyscale
PNGs with 16 bits per sample would be clipped to white by a plain ``convert("RGB")``.
"""

from __future__ import annotations

_HIGH_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def upright_rgb(image):
    """``image`` (a PIL image) turned upright by its EXIF orientation, as 8-bit RGB."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_GREY:
        import numpy as np

        pixels = np.asarray(image, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def open_rgb(path):
    """The image file at ``path`` (any format PIL reads) via `upright_rgb`. PIL's errors pass through, but
    for an image too large to decode safely (Pillow's decompression-bomb guard): a `UsageError` naming it."""
    from PIL import Image

    from expressiongrid.errors import UsageError

    try:
        with Image.open(path) as im:
            return upright_rgb(im)
    except Image.DecompressionBombError as exc:
        raise UsageError(f"{path}: cannot read the image ({exc}); scale it down to measure it") from exc
