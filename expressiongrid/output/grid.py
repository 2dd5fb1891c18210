"""Labelled comparison grids: A1111's layout, readable labels, and pages instead of oversized images.

Layout follows A1111's X/Y/Z plot (``modules/images.py``): column labels on top, row labels in a column
on the left ``cell_width * 3 // 4`` wide, font size ``(cell_width + cell_height) // 25``, line spacing half
the font size, words wrapped to the space they have, header height = tallest column label + two line
spacings. Where A1111 users complain it differs:

* labels wrap (long file-like names also after ``_ - . /``), then shrink down to a minimum font size,
  then end in an ellipsis: never vanish, never spill;
* small cells (the tiny model's 64 px) still get a readable minimum font size;
* optional page titles, margins between cells and a border around the grid;
* grids that would exceed what viewers and civitai accept (JPEG 65,535 px a side, WebP 16,383, Pillow's
  decompression-bomb limit, civitai's 50 MB) are split into pages before drawing, not failed after;
* a cell that failed to generate is drawn as a grey cell with a red cross and "failed".

Labels are user text: they are drawn literally, never interpreted. The font is Pillow's bundled scalable
font (``ImageFont.load_default(size=...)``) unless a TTF path is given.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from expressiongrid.errors import UsageError
from expressiongrid.output.images import CIVITAI_MAX_BYTES, JPEG_MAX_SIDE, WEBP_MAX_SIDE

__all__ = [
    "ELLIPSIS",
    "FORMAT_LIMITS",
    "GridLayout",
    "GridLimits",
    "GridPage",
    "GridPlan",
    "GridStyle",
    "compose_grid",
    "failed_cell",
    "fit_label",
    "image_grid",
    "plan_grid",
    "write_grid",
]

ELLIPSIS = "\u2026"


@dataclass(frozen=True)
class GridLimits:
    """What one grid image may not exceed. `max_pixels` None means Pillow's current MAX_IMAGE_PIXELS.

    `bytes_per_pixel` estimates the encoded size before the grid exists (PNG of generated photos stays
    below ~2 bytes a pixel; the upload copy is checked on its real bytes).
    """

    max_side: int
    max_bytes: int = CIVITAI_MAX_BYTES
    max_pixels: int | None = None
    bytes_per_pixel: float = 2.0

    @property
    def pixel_limit(self) -> int:
        if self.max_pixels is not None:
            return self.max_pixels
        return Image.MAX_IMAGE_PIXELS or 2**62

    def fits(self, width: int, height: int) -> bool:
        pixels = width * height
        return (
            max(width, height) <= self.max_side
            and pixels <= self.pixel_limit
            and pixels * self.bytes_per_pixel <= self.max_bytes
        )


FORMAT_LIMITS: dict[str, GridLimits] = {
    "png": GridLimits(max_side=2**31 - 1, bytes_per_pixel=2.0),
    "jpeg": GridLimits(max_side=JPEG_MAX_SIDE, bytes_per_pixel=0.8),
    "webp": GridLimits(max_side=WEBP_MAX_SIDE, bytes_per_pixel=0.6),
}


def limits_for(fmt: str) -> GridLimits:
    """The limits of an output format (``png``, ``jpeg``/``jpg``, ``webp``)."""
    key = fmt.lower().lstrip(".").replace("jpg", "jpeg")
    if key not in FORMAT_LIMITS:
        raise UsageError(f"grid format {fmt!r}: use png, jpeg or webp")
    return FORMAT_LIMITS[key]


@dataclass(frozen=True)
class GridStyle:
    """How a grid looks. Defaults reproduce A1111's geometry for usual cell sizes."""

    margin: int = 0  # gap between cells, like A1111's "Grid margins (px)"
    border: int = 0  # empty space around the whole grid
    min_font_size: int = 10
    max_column_label_lines: int = 3
    font_path: str | None = None
    background: str = "#ffffff"
    text_color: str = "#000000"


@dataclass(frozen=True)
class GridLayout:
    """Sizes shared by every page of a grid (so pages line up when viewed one after another)."""

    cell_width: int
    cell_height: int
    font_size: int
    line_spacing: int
    label_width: int  # row-label column (0 when there are no row labels)
    header_height: int  # column-label band (0 when there are no column labels)
    title_height: int
    margin: int
    border: int

    def page_size(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        width = 2 * self.border + self.label_width + n_cols * self.cell_width + self.margin * max(n_cols - 1, 0)
        height = (
            2 * self.border
            + self.title_height
            + self.header_height
            + n_rows * self.cell_height
            + self.margin * max(n_rows - 1, 0)
        )
        return width, height


@dataclass(frozen=True)
class GridPage:
    """One page: which rows and columns of the full grid it shows, and its pixel size."""

    index: int
    count: int
    rows: range
    cols: range
    size: tuple[int, int]


@dataclass(frozen=True)
class GridPlan:
    """The pages a grid will be drawn on, known before any cell is generated."""

    layout: GridLayout
    pages: list[GridPage]
    fmt: str
    unsplit_size: tuple[int, int] = field(default=(0, 0))

    @property
    def page_count(self) -> int:
        return len(self.pages)

    def describe(self) -> str:
        """One line for the runner's "what will be made" summary."""
        w, h = self.unsplit_size
        if self.page_count == 1:
            return f"1 grid page of {w}x{h} px ({self.fmt})"
        sizes = sorted({f"{p.size[0]}x{p.size[1]}" for p in self.pages})
        return (
            f"{self.page_count} grid pages ({self.fmt}; {', '.join(sizes)} px) instead of one {w}x{h} px "
            "image, which would exceed the format's or civitai's limits"
        )


# -- fonts and labels ----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _font(size: int, path: str | None) -> ImageFont.FreeTypeFont:
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError as exc:
            raise UsageError(f"grid font {path}: cannot load it as a TrueType font ({exc})") from None
    return ImageFont.load_default(size=size)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


_SOFT_BREAK = re.compile(r"(?<=[_\-./])")


def _wrap(text: str, width: int, font, soft: bool = False) -> list[str]:
    """Greedy word wrap (A1111's rule), explicit newlines kept, no empty first line for long words.

    With `soft`, a word may also break after ``_``, ``-``, ``.`` or ``/`` (file-like character names
    such as ``Gal_Gadot_v3`` wrap instead of shrinking to a tiny font).
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            pieces = [p for p in _SOFT_BREAK.split(word) if p] if soft else [word]
            for index, piece in enumerate(pieces):
                joiner = " " if index == 0 and current else ""
                candidate = f"{current}{joiner}{piece}"
                if font.getlength(candidate) <= width or not current:
                    current = candidate
                else:
                    lines.append(current)
                    current = piece
        lines.append(current)
    while len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


def _ellipsize(line: str, width: int, font) -> str:
    if font.getlength(line) <= width:
        return line
    cut = line
    while cut and font.getlength(cut.rstrip() + ELLIPSIS) > width:
        cut = cut[:-1]
    # Never vanish: even in a sliver of space the reader sees that a label was there.
    return (cut.rstrip() or line[:1]) + ELLIPSIS


def fit_label(
    text: str, width: int, max_lines: int, font_size: int, min_font_size: int, font_path: str | None = None
) -> tuple[int, list[str]]:
    """Fit `text` into `width` pixels and at most `max_lines` lines: wrap, shrink, then ellipsize.

    Returns the font size used and the lines to draw. The size goes down one point at a time from
    `font_size` to `min_font_size`; at the minimum, extra lines are dropped and over-long lines cut with
    an ellipsis (the last kept line always shows one when text was dropped).
    """
    text = str(text)
    if not text.strip():
        return font_size, []
    max_lines = max(1, max_lines)
    min_font_size = min(min_font_size, font_size)
    for size in range(font_size, min_font_size - 1, -1):
        font = _font(size, font_path)
        for soft in (False, True):
            lines = _wrap(text, width, font, soft)
            if len(lines) <= max_lines and all(font.getlength(line) <= width for line in lines):
                return size, lines
    font = _font(min_font_size, font_path)
    lines = _wrap(text, width, font, soft=True)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + ELLIPSIS) > width:
            last = last[:-1]
        lines[-1] = (last.rstrip() or lines[-1][:1]) + ELLIPSIS
    return min_font_size, [_ellipsize(line, width, font) for line in lines]


def _block_height(n_lines: int, line_height: int, spacing: int) -> int:
    return 0 if n_lines == 0 else n_lines * line_height + (n_lines - 1) * spacing


# -- planning ------------------------------------------------------------------------------------------


def _layout(
    cell_size: tuple[int, int],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None,
    style: GridStyle,
) -> GridLayout:
    w, h = cell_size
    font_size = max((w + h) // 25, style.min_font_size)
    spacing = font_size // 2
    line_h = _line_height(_font(font_size, style.font_path))
    has_rows = any(str(label).strip() for label in row_labels)
    label_width = max(w * 3 // 4, 6 * font_size) if has_rows else 0
    tallest = 0
    for label in col_labels:
        size, lines = fit_label(label, w, style.max_column_label_lines, font_size, style.min_font_size, style.font_path)
        tallest = max(tallest, _block_height(len(lines), line_h, spacing))
    header = tallest + 2 * spacing if tallest else 0
    title_height = 0
    if title:
        title_size = font_size * 5 // 4
        title_h = _line_height(_font(title_size, style.font_path))
        # Room for two lines so "(page 2/3)" can wrap without changing the page height.
        title_height = 2 * title_h + title_size // 2 + 2 * spacing
    return GridLayout(w, h, font_size, spacing, label_width, header, title_height, style.margin, style.border)


def _split(n: int, per_page: int) -> list[range]:
    """`n` items into the fewest pages of at most `per_page`, balanced (no nearly empty last page)."""
    if n == 0:
        return [range(0, 0)]
    pages = math.ceil(n / per_page)
    base, extra = divmod(n, pages)
    out, start = [], 0
    for i in range(pages):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def plan_grid(
    n_rows: int,
    n_cols: int,
    cell_size: tuple[int, int],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str | None = None,
    *,
    fmt: str = "png",
    style: GridStyle | None = None,
    limits: GridLimits | None = None,
) -> GridPlan:
    """Decide the pages of an `n_rows` x `n_cols` grid of `cell_size` cells before drawing it.

    Columns are split only when one row of all columns would not fit; rows are then split into as few
    balanced pages as the limits allow. UsageError if even one cell cannot fit (cells too big for
    the format), which is known before anything is generated.
    """
    style = style or GridStyle()
    limits = limits or limits_for(fmt)
    row_labels = list(row_labels) or [""] * n_rows
    col_labels = list(col_labels) or [""] * n_cols
    layout = _layout(cell_size, row_labels, col_labels, title, style)
    unsplit = layout.page_size(n_rows, n_cols)
    if not limits.fits(*layout.page_size(1, 1)):
        w, h = layout.page_size(1, 1)
        raise UsageError(
            f"a single {cell_size[0]}x{cell_size[1]} cell with labels ({w}x{h} px) exceeds the {fmt} limits; "
            "use smaller images or another grid format"
        )
    cols_per_page = n_cols
    while cols_per_page > 1 and not limits.fits(*layout.page_size(1, cols_per_page)):
        cols_per_page -= 1
    col_groups = _split(n_cols, max(cols_per_page, 1))
    widest = max((len(g) for g in col_groups), default=0)
    rows_per_page = max(n_rows, 1)
    while rows_per_page > 1 and not limits.fits(*layout.page_size(rows_per_page, widest)):
        rows_per_page -= 1
    row_groups = _split(n_rows, rows_per_page)
    count = len(row_groups) * len(col_groups)
    pages = []
    for rows in row_groups:
        for cols in col_groups:
            pages.append(GridPage(len(pages), count, rows, cols, layout.page_size(len(rows), len(cols))))
    return GridPlan(layout, pages, fmt, unsplit)


# -- drawing -------------------------------------------------------------------------------------------


def failed_cell(width: int, height: int, text: str = "failed") -> Image.Image:
    """A grey cell with a red cross and a caption: a cell whose image could not be generated."""
    image = Image.new("RGB", (width, height), "#9a9a9a")
    draw = ImageDraw.Draw(image)
    stroke = max(2, min(width, height) // 24)
    inset = min(width, height) // 6
    draw.line((inset, inset, width - inset, height - inset), fill="#d01010", width=stroke)
    draw.line((inset, height - inset, width - inset, inset), fill="#d01010", width=stroke)
    size = max(10, (width + height) // 16)
    size, lines = fit_label(text, width - 4, 2, size, 8)
    font = _font(size, None)
    y = height - _block_height(len(lines), _line_height(font), 0) - max(2, height // 20)
    for line in lines:
        box = font.getbbox(line)
        x = (width - (box[2] - box[0])) // 2
        # A dark outline keeps the caption readable over the cross.
        draw.text((x, y), line, font=font, fill="#ffffff", stroke_width=max(1, size // 10), stroke_fill="#303030")
        y += _line_height(font)
    return image


def _draw_lines(draw, lines, size, centre_x, top, style: GridStyle, spacing: int, line_h: int) -> None:
    font = _font(size, style.font_path)
    own_h = _line_height(font)
    for line in lines:
        # Shrunk labels keep the full line pitch so neighbouring labels stay aligned.
        draw.text((centre_x, top + (line_h - own_h) / 2), line, font=font, fill=style.text_color, anchor="ma")
        top += line_h + spacing


def _size_of(cell: Any) -> tuple[int, int]:
    if isinstance(cell, (str, Path)):
        with Image.open(cell) as im:
            return im.size
    return cell.size


def _cell_image(cell: Any, size: tuple[int, int]) -> Image.Image:
    if cell is None:
        return failed_cell(*size)
    if isinstance(cell, (str, Path)):
        with Image.open(cell) as im:
            return im.convert("RGB")
    return cell


def compose_grid(
    cells: Sequence[Sequence[Any]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None = None,
    *,
    fmt: str = "png",
    style: GridStyle | None = None,
    limits: GridLimits | None = None,
    cell_size: tuple[int, int] | None = None,
) -> list[Image.Image]:
    """Draw a labelled grid; returns one image per page (usually one).

    `cells[r][c]` is a PIL image, a path to one, or None for a failed cell (drawn with a red cross).
    Cells smaller than the largest are centred, as in A1111. Each page repeats the row and column labels
    of its cells and, with a `title`, shows it with "(page i/n)" when there is more than one page.
    Each image's ``info["grid_page"]`` holds its `GridPage`.
    """
    style = style or GridStyle()
    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    if len(row_labels) not in (0, n_rows) or len(col_labels) not in (0, n_cols):
        raise UsageError(
            f"grid has {n_rows} rows and {n_cols} columns but {len(row_labels)} row labels and "
            f"{len(col_labels)} column labels"
        )
    if cell_size is None:
        sizes = [_size_of(c) for row in cells for c in row if c is not None]
        cell_size = (max((s[0] for s in sizes), default=64), max((s[1] for s in sizes), default=64))
    row_labels = [str(x) for x in row_labels] or [""] * n_rows
    col_labels = [str(x) for x in col_labels] or [""] * n_cols
    plan = plan_grid(n_rows, n_cols, cell_size, row_labels, col_labels, title, fmt=fmt, style=style, limits=limits)
    layout = plan.layout
    w, h = cell_size
    line_h = _line_height(_font(layout.font_size, style.font_path))
    spacing = layout.line_spacing
    row_max_lines = max(1, (h + spacing) // (line_h + spacing))
    row_fit = [fit_label(t, layout.label_width - layout.font_size // 2, row_max_lines, layout.font_size, style.min_font_size, style.font_path) for t in row_labels]
    col_fit = [fit_label(t, w, style.max_column_label_lines, layout.font_size, style.min_font_size, style.font_path) for t in col_labels]

    pages: list[Image.Image] = []
    for page in plan.pages:
        canvas = Image.new("RGB", page.size, style.background)
        draw = ImageDraw.Draw(canvas)
        top = layout.border
        if title:
            text = title if page.count == 1 else f"{title} (page {page.index + 1}/{page.count})"
            title_size = layout.font_size * 5 // 4
            size, lines = fit_label(text, page.size[0] - 2 * layout.border, 2, title_size, style.min_font_size, style.font_path)
            th = _line_height(_font(title_size, style.font_path))
            block = _block_height(len(lines), th, title_size // 4)
            _draw_lines(draw, lines, size, page.size[0] / 2, top + (layout.title_height - block) / 2, style, title_size // 4, th)
            top += layout.title_height
        grid_left = layout.border + layout.label_width
        grid_top = top + layout.header_height
        for j, c in enumerate(page.cols):
            size, lines = col_fit[c]
            block = _block_height(len(lines), line_h, spacing)
            cx = grid_left + (w + layout.margin) * j + w / 2
            _draw_lines(draw, lines, size, cx, top + (layout.header_height - block) / 2, style, spacing, line_h)
        for i, r in enumerate(page.rows):
            cy = grid_top + (h + layout.margin) * i
            size, lines = row_fit[r]
            block = _block_height(len(lines), line_h, spacing)
            _draw_lines(draw, lines, size, layout.border + layout.label_width / 2, cy + (h - block) / 2, style, spacing, line_h)
            row = cells[r]
            for j, c in enumerate(page.cols):
                cell = row[c] if c < len(row) else None
                image = _cell_image(cell, cell_size)
                x = grid_left + (w + layout.margin) * j + (w - image.width) // 2
                y = cy + (h - image.height) // 2
                canvas.paste(image.convert("RGB") if image.mode != "RGB" else image, (x, y))
        canvas.info["grid_page"] = page
        pages.append(canvas)
    return pages


def image_grid(images: Sequence[Image.Image], rows: int | None = None, background: str = "#ffffff") -> Image.Image:
    """Tile images without labels, like A1111's per-cell batch grid (several seeds in one cell).

    Without `rows`, A1111's default: ``round(sqrt(n))`` rows; columns fill up, cells are the largest
    image's size, smaller images centred.
    """
    if not images:
        raise UsageError("image_grid needs at least one image")
    n = len(images)
    rows = round(math.sqrt(n)) if rows is None or rows <= 0 else rows
    rows = max(1, min(rows, n))
    cols = math.ceil(n / rows)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    canvas = Image.new("RGB", (cols * w, rows * h), background)
    for i, im in enumerate(images):
        x, y = (i % cols) * w + (w - im.width) // 2, (i // cols) * h + (h - im.height) // 2
        canvas.paste(im.convert("RGB") if im.mode != "RGB" else im, (x, y))
    return canvas


def write_grid(
    pages: Sequence[Image.Image],
    out_dir: str | Path,
    stem: str,
    parameters: str | None = None,
    *,
    fmt: str = "png",
    upload_fmt: str | None = "jpeg",
) -> list[dict[str, Path]]:
    """Write each page (``<stem>.png`` or ``<stem>-page2.png`` ...) plus an upload-sized copy beside it.

    Every file carries `parameters` (PNG text chunk or EXIF UserComment). Returns, per page, the paths
    written: ``{"grid": ..., "upload": ...}``.
    """
    from expressiongrid.output.images import save_image, save_upload_copy

    ext = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}[fmt.lower()]
    out_dir = Path(out_dir)
    written = []
    for index, page in enumerate(pages):
        name = stem if len(pages) == 1 else f"{stem}-page{index + 1}"
        files = {"grid": save_image(out_dir / f"{name}{ext}", page, parameters)}
        if upload_fmt:
            up_ext = ".webp" if upload_fmt.lower() == "webp" else ".jpg"
            files["upload"] = save_upload_copy(out_dir / f"{name}.upload{up_ext}", page, parameters, fmt=upload_fmt)
        written.append(files)
    return written
