"""Labelled comparison grids: A1111's layout, labels people can read, and pages only when needed.

Layout follows A1111's X/Y/Z plot (``modules/images.py``): column labels on top, row labels in a column
on the left ``cell_width * 3 // 4`` wide, font size ``(cell_width + cell_height) // 25``, line spacing half
the font size, words wrapped to the space they have, header height = tallest column label + two line
spacings. Where A1111 users complain it differs:

* any script renders: labels are drawn with a chain of fonts (``output/fonts.py``), each character in the
  first font that has it; characters no font has are reported before generation;
* labels grow with the grid so they stay readable when the whole grid is shown about 1200 px wide (a post
  viewed on civitai), and turn bold at larger sizes;
* labels wrap (long file-like names also after ``_ - . /``), then shrink down to a minimum font size,
  then end in an ellipsis: never vanish, never spill;
* optional page titles, axis titles (what varies along rows and columns), a caption line, margins and a
  border;
* a grid is one image whenever the output format can hold it; otherwise it is split before drawing into
  near-square pages of whole rows and columns (each with its own labels), never failed after; the upload
  copy is one image of the whole grid whenever its cells can stay at a useful size;
* a cell that failed to generate is drawn as a grey cell with a red cross and "failed".

Labels are user text: they are drawn literally, never interpreted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from expressiongrid.errors import UsageError
from expressiongrid.output.fonts import LabelFont, label_font, missing_glyphs
from expressiongrid.output.images import CIVITAI_MAX_BYTES, JPEG_MAX_SIDE, WEBP_MAX_SIDE
from expressiongrid.output.infotext import axis_type_name
from expressiongrid.output.metadata import CellMetadata
from expressiongrid.text import bidi_controls_in

__all__ = [
    "ELLIPSIS",
    "FORMAT_LIMITS",
    "GridLayout",
    "GridLimits",
    "GridOptions",
    "GridPage",
    "GridPlan",
    "GridStyle",
    "UPLOAD_LIMITS",
    "compose_grid",
    "compose_upload_copy",
    "failed_cell",
    "fit_label",
    "image_grid",
    "label_size",
    "plan_grid",
    "upload_cell_size",
    "write_grid",
]

ELLIPSIS = "\u2026"


@dataclass(frozen=True)
class GridLimits:
    """What one grid image may not exceed. `max_pixels` None means Pillow's current MAX_IMAGE_PIXELS (a
    bigger image could not be opened again by Pillow-based tools, civitai's resizer included).

    `max_bytes` (None: no limit) is checked on an estimate before the grid exists, `bytes_per_pixel`
    (JPEG of generated photos stays below ~0.8 bytes a pixel); upload copies are then checked on their
    real encoded bytes.
    """

    max_side: int
    max_bytes: int | None = None
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
            and (self.max_bytes is None or pixels * self.bytes_per_pixel <= self.max_bytes)
        )


# What a grid file in each format can hold. The civitai byte limit is not here: it applies to the upload
# copy (UPLOAD_LIMITS), which is always written, so the full-quality grid need not be split for it.
FORMAT_LIMITS: dict[str, GridLimits] = {
    "png": GridLimits(max_side=2**31 - 1),
    "jpeg": GridLimits(max_side=JPEG_MAX_SIDE),
    "webp": GridLimits(max_side=WEBP_MAX_SIDE),
}
UPLOAD_LIMITS: dict[str, GridLimits] = {
    "jpeg": GridLimits(max_side=JPEG_MAX_SIDE, max_bytes=CIVITAI_MAX_BYTES, bytes_per_pixel=0.8),
    "webp": GridLimits(max_side=WEBP_MAX_SIDE, max_bytes=CIVITAI_MAX_BYTES, bytes_per_pixel=0.6),
}
MIN_UPLOAD_CELL = 96  # an upload copy whose cells would be smaller than this is no use as one image


def limits_for(fmt: str) -> GridLimits:
    """The limits of an output format (``png``, ``jpeg``/``jpg``, ``webp``)."""
    key = fmt.lower().lstrip(".").replace("jpg", "jpeg")
    if key not in FORMAT_LIMITS:
        raise UsageError(f"grid format {fmt!r}: use png, jpeg or webp")
    return FORMAT_LIMITS[key]


@dataclass(frozen=True)
class GridStyle:
    """How a grid looks. Defaults reproduce A1111's geometry for small grids and grow labels for big ones.

    `view_width`: labels are made at least `legible_px` tall when the whole grid is shown this many pixels
    wide (None: A1111's font size only). `bold`: None picks bold from 24 px up.
    """

    margin: int = 0  # gap between cells, like A1111's "Grid margins (px)"
    border: int = 0  # empty space around the whole grid
    min_font_size: int = 10
    max_column_label_lines: int = 3
    font_path: str | None = None
    background: str = "#ffffff"
    text_color: str = "#000000"
    view_width: int | None = 1200
    legible_px: int = 11
    bold: bool | None = None


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
    axis_height: int = 0  # band above the column labels with the column axis title
    caption_height: int = 0  # band below the cells with the caption line
    bold: bool = False

    def page_size(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        width = 2 * self.border + self.label_width + n_cols * self.cell_width + self.margin * max(n_cols - 1, 0)
        height = (
            2 * self.border
            + self.title_height
            + self.axis_height
            + self.header_height
            + n_rows * self.cell_height
            + self.margin * max(n_rows - 1, 0)
            + self.caption_height
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
    warnings: list[str] = field(default_factory=list)
    reason: str = ""  # why the grid is split ("" when it is one image)

    @property
    def page_count(self) -> int:
        return len(self.pages)

    def describe(self) -> str:
        """One line for the runner's "what will be made" summary."""
        w, h = self.unsplit_size
        if self.page_count == 1:
            return f"1 grid page of {w}x{h} px ({self.fmt})"
        sizes = sorted({f"{p.size[0]}x{p.size[1]}" for p in self.pages})
        return (f"{self.page_count} grid pages ({self.fmt}; {', '.join(sizes)} px) instead of one {w}x{h} px "
                f"image: {self.reason}")

    def to_dict(self) -> dict:
        """The plan as plain data (``run --dry-run --json``)."""
        return {
            "format": self.fmt,
            "pages": self.page_count,
            "unsplit_size": list(self.unsplit_size),
            "split_because": self.reason or None,
            "page_sizes": [list(p.size) for p in self.pages],
            "page_cells": [{"rows": [p.rows.start, p.rows.stop], "columns": [p.cols.start, p.cols.stop]}
                           for p in self.pages],
            "font_size": self.layout.font_size,
            "warnings": list(self.warnings),
        }


# -- fonts and labels ----------------------------------------------------------------------------------


def _font(size: int, path: str | None, bold: bool = False) -> LabelFont:
    return label_font(size, path, bold)


def _line_height(font: LabelFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


_SOFT_BREAK = re.compile(r"(?<=[_\-./])")


def _wrap(text: str, width: int, font, soft: bool = False, limit: int | None = None) -> list[str]:
    """Greedy word wrap (A1111's rule), explicit newlines kept, no empty first line for long words.

    With `soft`, a word may also break after ``_``, ``-``, ``.`` or ``/`` (file-like character names
    such as ``Gal_Gadot_v3`` wrap instead of shrinking to a tiny font). Text without spaces between words
    (Chinese, Japanese) may break between any two characters. With `limit`, wrapping stops once more than
    `limit` lines are made (a caller that keeps `limit` lines needs no more to know that text was cut).
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        if limit is not None and len(lines) > limit:
            break
        current = ""
        for word in paragraph.split():
            pieces = [p for p in _SOFT_BREAK.split(word) if p] if soft else [word]
            if soft and font.getlength(word) > width and any(_is_wide(ch) for ch in word):
                pieces = list(word)
            for index, piece in enumerate(pieces):
                joiner = " " if index == 0 and current else ""
                candidate = f"{current}{joiner}{piece}"
                if font.getlength(candidate) <= width or not current:
                    current = candidate
                else:
                    lines.append(current)
                    current = piece
            if limit is not None and len(lines) > limit:
                break
        lines.append(current)
    while len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


def _is_wide(ch: str) -> bool:
    import unicodedata

    return unicodedata.east_asian_width(ch) in ("W", "F")


def _cut_to_fit(line: str, width: int, font) -> str:
    """The longest start of `line` that, with an ellipsis after it, fits `width` ("" when none does).
    A binary search over the length (a few dozen measurements, not one per character of a long label),
    then a step back for the rare font whose kerning makes a longer start narrower."""
    def fits(n: int) -> bool:
        return font.getlength(line[:n].rstrip() + ELLIPSIS) <= width

    low, high = 0, len(line)  # fits(low) is assumed, the answer is in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    while low and not fits(low):
        low -= 1
    return line[:low]


def _ellipsize(line: str, width: int, font) -> str:
    if font.getlength(line) <= width:
        return line
    cut = _cut_to_fit(line, width, font)
    # Never vanish: even in a sliver of space the reader sees that a label was there.
    return (cut.rstrip() or line[:1]) + ELLIPSIS


def fit_label(
    text: str, width: int, max_lines: int, font_size: int, min_font_size: int, font_path: str | None = None,
    bold: bool = False,
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
        font = _font(size, font_path, bold)
        for soft in (False, True):
            lines = _wrap(text, width, font, soft, limit=max_lines)
            if len(lines) <= max_lines and all(font.getlength(line) <= width for line in lines):
                return size, lines
    font = _font(min_font_size, font_path, bold)
    lines = _wrap(text, width, font, soft=True, limit=max_lines)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = _cut_to_fit(lines[-1], width, font)
        lines[-1] = (last.rstrip() or lines[-1][:1]) + ELLIPSIS
    return min_font_size, [_ellipsize(line, width, font) for line in lines]


def _block_height(n_lines: int, line_height: int, spacing: int) -> int:
    return 0 if n_lines == 0 else n_lines * line_height + (n_lines - 1) * spacing


# -- planning ------------------------------------------------------------------------------------------


def label_size(cell_size: tuple[int, int], n_cols: int, style: GridStyle) -> int:
    """The label font size: A1111's ``(w + h) // 25``, at least `min_font_size`, and large enough to be
    `legible_px` tall when the whole grid is shown `view_width` px wide — but never more than a sixth of a
    cell's height, so labels do not crowd out the images."""
    w, h = cell_size
    size = max((w + h) // 25, style.min_font_size)
    if style.view_width:
        grid_width = n_cols * w + max(n_cols - 1, 0) * style.margin + w * 3 // 4
        legible = math.ceil(grid_width * style.legible_px / style.view_width)
        size = max(size, min(legible, h // 6, w // 4))
    return size


def _layout(
    cell_size: tuple[int, int],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None,
    style: GridStyle,
    row_title: str | None = None,
    col_title: str | None = None,
    caption: str | None = None,
) -> GridLayout:
    w, h = cell_size
    font_size = label_size(cell_size, len(col_labels), style)
    bold = style.bold if style.bold is not None else font_size >= 24
    spacing = font_size // 2
    line_h = _line_height(_font(font_size, style.font_path, bold))
    has_rows = any(str(label).strip() for label in row_labels) or bool(row_title)
    label_width = max(w * 3 // 4, 6 * font_size) if has_rows else 0
    tallest = 0
    for label in col_labels:
        size, lines = fit_label(label, w, style.max_column_label_lines, font_size, style.min_font_size,
                                style.font_path, bold)
        tallest = max(tallest, _block_height(len(lines), line_h, spacing))
    if row_title:
        tallest = max(tallest, line_h)  # the row axis title sits in the corner above the row labels
    header = tallest + 2 * spacing if tallest else 0
    title_height = 0
    if title:
        title_size = font_size * 5 // 4
        title_h = _line_height(_font(title_size, style.font_path, True))
        # Room for two lines so "(page 2/3)" can wrap without changing the page height.
        title_height = 2 * title_h + title_size // 2 + 2 * spacing
    axis_height = line_h + spacing if col_title else 0
    caption_height = _line_height(_font(_caption_size(font_size), style.font_path)) + 2 * spacing if caption else 0
    return GridLayout(w, h, font_size, spacing, label_width, header, title_height, style.margin, style.border,
                      axis_height, caption_height, bold)


def _caption_size(font_size: int) -> int:
    return max(10, font_size * 3 // 4)


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


def _choose_split(n_rows: int, n_cols: int, layout: GridLayout, limits: GridLimits,
                  max_cells: int | None) -> tuple[list[range], list[range]]:
    """Row groups and column groups: few pages, each close to square.

    Every way of cutting the grid into blocks of whole rows and columns that fit the limits (and
    `max_cells` cells a page) is scored by pages x (1 + |log2(aspect)| / 2), so four square pages win
    over three strips three times as wide as tall, while one page always wins when it fits.
    """
    best = None
    for cols_per in sorted({math.ceil(n_cols / k) for k in range(1, n_cols + 1)}, reverse=True):
        col_groups = _split(n_cols, cols_per)
        widest = max(len(g) for g in col_groups)
        for rows_per in sorted({math.ceil(n_rows / k) for k in range(1, n_rows + 1)}, reverse=True):
            if max_cells is not None and rows_per * widest > max_cells:
                continue
            row_groups = _split(n_rows, rows_per)
            tallest = max(len(g) for g in row_groups)
            w, h = layout.page_size(tallest, widest)
            if not limits.fits(w, h):
                continue
            count = len(row_groups) * len(col_groups)
            score = count * (1 + abs(math.log2(w / h)) / 2)
            if best is None or score < best[0] - 1e-9:
                best = (score, row_groups, col_groups)
            break  # fewer rows per page only adds pages for these columns
        # (the next, narrower column split is tried even when this one fitted: it may be squarer)
    if best is None:
        return _split(n_rows, 1), _split(n_cols, 1)
    return best[1], best[2]


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
    max_cells_per_page: int | None = None,
    row_title: str | None = None,
    col_title: str | None = None,
    caption: str | None = None,
    also_drawn: Sequence[str] = (),
) -> GridPlan:
    """Decide the pages of an `n_rows` x `n_cols` grid of `cell_size` cells before drawing it.

    One page when the format's limits (and `max_cells_per_page`) allow; otherwise near-square blocks of
    whole rows and columns (`_choose_split`). UsageError if even one cell cannot fit (cells too big for
    the format), which is known before anything is generated. `warnings` lists label characters that no
    installed font can draw (and direction controls left out), also for `also_drawn` (the titles of a study's
    pages, ``page_title``).
    """
    style = style or GridStyle()
    limits = limits or limits_for(fmt)
    row_labels = list(row_labels) or [""] * n_rows
    col_labels = list(col_labels) or [""] * n_cols
    layout = _layout(cell_size, row_labels, col_labels, title, style, row_title, col_title, caption)
    unsplit = layout.page_size(n_rows, n_cols)
    if not limits.fits(*layout.page_size(1, 1)):
        w, h = layout.page_size(1, 1)
        raise UsageError(
            f"a single {cell_size[0]}x{cell_size[1]} cell with labels ({w}x{h} px) exceeds the {fmt} limits; "
            "use smaller images or another grid format"
        )
    too_many = max_cells_per_page is not None and n_rows * n_cols > max_cells_per_page
    if limits.fits(*unsplit) and not too_many:
        row_groups, col_groups, reason = [range(0, n_rows)], [range(0, n_cols)], ""
    else:
        row_groups, col_groups = _choose_split(n_rows, n_cols, layout, limits, max_cells_per_page)
        side = f" and {limits.max_side} px a side" if limits.max_side < 2**31 - 1 else ""
        reason = (f"more than max_cells_per_page = {max_cells_per_page} cells" if limits.fits(*unsplit) else
                  f"{unsplit[0]}x{unsplit[1]} px is more than one {fmt} image can hold (at most "
                  f"{limits.pixel_limit / 1e6:.1f} MP{side})")
    count = len(row_groups) * len(col_groups)
    pages = []
    for rows in row_groups:
        for cols in col_groups:
            pages.append(GridPage(len(pages), count, rows, cols, layout.page_size(len(rows), len(cols))))
    texts = [*row_labels, *col_labels, *(t for t in (title, row_title, col_title, caption, *also_drawn) if t)]
    warnings = [f"grid label {text!r}: no installed font can draw " + ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in chars)
                + "; it shows as a box. Set [output] font to a font file that has it (docs/grids-and-metadata.md, Fonts)"
                for text, chars in missing_glyphs(texts, style.font_path).items()]
    for text in dict.fromkeys(texts):
        controls = bidi_controls_in(text)
        if controls:
            warnings.append(f"grid label {text!r}: its direction control character(s) "
                            + ", ".join(f"U+{ord(ch):04X}" for ch in controls) + " are left out where the label is "
                            "drawn, so it reads in the order it was written (the text itself is kept as written)")
    return GridPlan(layout, pages, fmt, unsplit, warnings, reason)


def page_title(title: str | None, page_label: str) -> str | None:
    """The title drawn on one page of a study's grid: the study's title and the page's label."""
    if not page_label:
        return title
    return f"{title} — {page_label}" if title else page_label


# -- a study's grid options ---------------------------------------------------------------------------

# Caption keys (A1111 infotext names), the metadata field each shows, and the axis type that varies it (then
# the caption leaves it out).
_CAPTION_KEYS = [("Model", "model", "Checkpoint name"), ("Sampler", "sampler", "Sampler"), ("Steps", "steps", "Steps"),
                 ("CFG scale", "cfg_scale", "CFG Scale"), ("Seed", "seed", "Seed")]


@dataclass(frozen=True)
class GridOptions:
    """The grid settings of a study's ``[output]`` table, as the planner and the compositor both use them."""

    style: GridStyle
    max_cells_per_page: int | None = None
    row_title: str | None = None
    col_title: str | None = None
    caption: bool | str = False
    varying: frozenset = frozenset()  # axis types of the grid (their values are in the labels, not the caption)

    @classmethod
    def from_output(cls, output: dict, row_kind: str | None, col_kind: str | None,
                    page_kind: str | None = None) -> "GridOptions":
        titles = bool(output.get("axis_titles"))
        return cls(
            style=GridStyle(margin=output.get("margin", 0) or 0, font_path=output.get("font")),
            max_cells_per_page=output.get("max_cells_per_page"),
            row_title=axis_type_name(row_kind) if titles and row_kind else None,
            col_title=axis_type_name(col_kind) if titles and col_kind else None,
            caption=output.get("caption") or False,
            varying=frozenset(k for k in (row_kind, col_kind, page_kind) if k),
        )

    def caption_text(self, metadata: CellMetadata | None) -> str | None:
        """The caption line from a grid's metadata (``output.metadata.grid_metadata``):
        ``Model: x · Sampler: y · Steps: 20 · ...``; None without metadata (no cell finished)."""
        if not self.caption:
            return None
        if isinstance(self.caption, str):
            return self.caption
        if metadata is None:
            return None
        parts = []
        for key, name, axis in _CAPTION_KEYS:
            value = getattr(metadata, name)
            if value in (None, "") or axis in self.varying:
                continue
            if name == "sampler" and metadata.schedule_type not in (None, "", "Automatic"):
                value = f"{value} {metadata.schedule_type}"
            parts.append(f"{key}: {value}")
        return " · ".join(parts) or None

    def plan_kwargs(self) -> dict:
        """Keyword arguments for `plan_grid`/`compose_grid` (a placeholder caption: only its band matters)."""
        return {"style": self.style, "max_cells_per_page": self.max_cells_per_page, "row_title": self.row_title,
                "col_title": self.col_title, "caption": "caption" if self.caption else None}


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
        # A dark outline keeps the caption readable over the cross.
        font.draw(draw, (width / 2, y), line, "#ffffff", stroke_width=max(1, size // 10), stroke_fill="#303030")
        y += _line_height(font)
    return image


def _draw_lines(draw, lines, size, centre_x, top, style: GridStyle, spacing: int, line_h: int,
                bold: bool = False) -> None:
    font = _font(size, style.font_path, bold)
    own_h = _line_height(font)
    for line in lines:
        # Shrunk labels keep the full line pitch so neighbouring labels stay aligned.
        font.draw(draw, (centre_x, top + (line_h - own_h) / 2), line, style.text_color)
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


def _check_shape(cells, row_labels, col_labels) -> tuple[int, int]:
    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    if len(row_labels) not in (0, n_rows) or len(col_labels) not in (0, n_cols):
        raise UsageError(
            f"grid has {n_rows} rows and {n_cols} columns but {len(row_labels)} row labels and "
            f"{len(col_labels)} column labels"
        )
    return n_rows, n_cols


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
    max_cells_per_page: int | None = None,
    row_title: str | None = None,
    col_title: str | None = None,
    caption: str | None = None,
) -> list[Image.Image]:
    """Draw a labelled grid; returns one image per page (one whenever the format can hold the grid).

    `cells[r][c]` is a PIL image, a path to one, or None for a failed cell (drawn with a red cross).
    Cells smaller than the largest are centred, as in A1111. Each page shows the labels of its own rows
    and columns and, with a `title`, the title with "(page i/n)" when there is more than one page.
    `row_title`/`col_title` name what varies down the rows and across the columns; `caption` is a line
    under the cells (e.g. model, sampler, steps, CFG and seed). Each image's ``info["grid_page"]`` holds
    its `GridPage`.
    """
    style = style or GridStyle()
    n_rows, n_cols = _check_shape(cells, row_labels, col_labels)
    if cell_size is None:
        sizes = [_size_of(c) for row in cells for c in row if c is not None]
        cell_size = (max((s[0] for s in sizes), default=64), max((s[1] for s in sizes), default=64))
    row_labels = [str(x) for x in row_labels] or [""] * n_rows
    col_labels = [str(x) for x in col_labels] or [""] * n_cols
    plan = plan_grid(n_rows, n_cols, cell_size, row_labels, col_labels, title, fmt=fmt, style=style, limits=limits,
                     max_cells_per_page=max_cells_per_page, row_title=row_title, col_title=col_title,
                     caption=caption)
    layout = plan.layout
    bold = layout.bold
    w, h = cell_size
    line_h = _line_height(_font(layout.font_size, style.font_path, bold))
    spacing = layout.line_spacing
    row_max_lines = max(1, (h + spacing) // (line_h + spacing))
    fit = lambda t, width, lines: fit_label(t, width, lines, layout.font_size, style.min_font_size,  # noqa: E731
                                            style.font_path, bold)
    row_fit = [fit(t, layout.label_width - layout.font_size // 2, row_max_lines) for t in row_labels]
    col_fit = [fit(t, w, style.max_column_label_lines) for t in col_labels]

    pages: list[Image.Image] = []
    for page in plan.pages:
        canvas = Image.new("RGB", page.size, style.background)
        draw = ImageDraw.Draw(canvas)
        top = layout.border
        grid_left = layout.border + layout.label_width
        cells_width = page.size[0] - grid_left - layout.border
        if title:
            text = title if page.count == 1 else f"{title} (page {page.index + 1}/{page.count})"
            title_size = layout.font_size * 5 // 4
            size, lines = fit_label(text, page.size[0] - 2 * layout.border, 2, title_size, style.min_font_size,
                                    style.font_path, True)
            th = _line_height(_font(title_size, style.font_path, True))
            block = _block_height(len(lines), th, title_size // 4)
            _draw_lines(draw, lines, size, page.size[0] / 2, top + (layout.title_height - block) / 2, style,
                        title_size // 4, th, True)
            top += layout.title_height
        if col_title:
            size, lines = fit(col_title, cells_width, 1)
            _draw_lines(draw, lines, size, grid_left + cells_width / 2, top + spacing / 2, style, spacing, line_h,
                        True)
            top += layout.axis_height
        grid_top = top + layout.header_height
        if row_title:
            size, lines = fit(row_title, layout.label_width - layout.font_size // 2, 1)
            _draw_lines(draw, lines, size, layout.border + layout.label_width / 2, grid_top - spacing - line_h,
                        style, spacing, line_h, True)
        for j, c in enumerate(page.cols):
            size, lines = col_fit[c]
            block = _block_height(len(lines), line_h, spacing)
            cx = grid_left + (w + layout.margin) * j + w / 2
            _draw_lines(draw, lines, size, cx, top + (layout.header_height - block) / 2, style, spacing, line_h, bold)
        for i, r in enumerate(page.rows):
            cy = grid_top + (h + layout.margin) * i
            size, lines = row_fit[r]
            block = _block_height(len(lines), line_h, spacing)
            _draw_lines(draw, lines, size, layout.border + layout.label_width / 2, cy + (h - block) / 2, style,
                        spacing, line_h, bold)
            row = cells[r]
            for j, c in enumerate(page.cols):
                cell = row[c] if c < len(row) else None
                image = _cell_image(cell, cell_size)
                x = grid_left + (w + layout.margin) * j + (w - image.width) // 2
                y = cy + (h - image.height) // 2
                canvas.paste(image.convert("RGB") if image.mode != "RGB" else image, (x, y))
        if caption:
            cap_size = _caption_size(layout.font_size)
            size, lines = fit_label(caption, page.size[0] - 2 * layout.border, 1, cap_size, style.min_font_size,
                                    style.font_path)
            cap_h = _line_height(_font(cap_size, style.font_path))
            _draw_lines(draw, lines, size, page.size[0] / 2, page.size[1] - layout.border - layout.caption_height
                        + (layout.caption_height - cap_h) / 2, style, 0, cap_h)
        canvas.info["grid_page"] = page
        pages.append(canvas)
    return pages


def upload_cell_size(n_rows: int, n_cols: int, cell_size: tuple[int, int], row_labels: Sequence[str] = (),
                     col_labels: Sequence[str] = (), title: str | None = None, *, upload_fmt: str = "jpeg",
                     style: GridStyle | None = None, row_title: str | None = None, col_title: str | None = None,
                     caption: str | None = None) -> tuple[int, int] | None:
    """The cell size at which the whole grid is one upload image within civitai's limits, or None when
    its cells would have to be smaller than `MIN_UPLOAD_CELL` (then each page gets its own copy).

    Cells are scaled down and the labels laid out again for the smaller cells (not a shrunken page), so
    they stay readable.
    """
    style = style or GridStyle()
    limits = UPLOAD_LIMITS[upload_fmt.lower().replace("jpg", "jpeg")]
    w, h = cell_size
    scale = 1.0
    while True:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min(size) < min(MIN_UPLOAD_CELL, w, h):
            return None
        plan = plan_grid(n_rows, n_cols, size, row_labels, col_labels, title, style=style, limits=limits,
                         row_title=row_title, col_title=col_title, caption=caption)
        if limits.fits(*plan.unsplit_size):
            return size
        scale *= 0.9


def compose_upload_copy(cells: Sequence[Sequence[Any]], row_labels: Sequence[str], col_labels: Sequence[str],
                        title: str | None = None, *, upload_fmt: str = "jpeg", style: GridStyle | None = None,
                        cell_size: tuple[int, int] | None = None, row_title: str | None = None,
                        col_title: str | None = None, caption: str | None = None) -> Image.Image | None:
    """The whole grid as one image for upload (see `upload_cell_size`), or None when none can be made."""
    n_rows, n_cols = _check_shape(cells, row_labels, col_labels)
    if cell_size is None:
        sizes = [_size_of(c) for row in cells for c in row if c is not None]
        cell_size = (max((s[0] for s in sizes), default=64), max((s[1] for s in sizes), default=64))
    size = upload_cell_size(n_rows, n_cols, cell_size, row_labels, col_labels, title, upload_fmt=upload_fmt,
                            style=style, row_title=row_title, col_title=col_title, caption=caption)
    if size is None:
        return None
    scale = size[0] / cell_size[0]

    def shrink(cell):
        if cell is None:
            return None
        image = _cell_image(cell, cell_size)
        if scale >= 1:
            return image
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)

    small = [[shrink(c) for c in row] for row in cells]
    (image,) = compose_grid(small, row_labels, col_labels, title, style=style, cell_size=size,
                            limits=UPLOAD_LIMITS[upload_fmt.lower().replace("jpg", "jpeg")], row_title=row_title,
                            col_title=col_title, caption=caption)
    return image


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


_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}


def write_grid(
    parts: Sequence[Image.Image],
    out_dir: str | Path,
    stem: str,
    parameters: str | None = None,
    *,
    formats: Sequence[str] = ("png",),
    upload_fmt: str | None = "jpeg",
    upload: Image.Image | None = None,
) -> list[dict[str, Any]]:
    """Write the parts of one grid (``<stem>.png``, or ``<stem>-part1.png`` ... when it was split) in each
    of `formats`, and its upload copy (``<stem>.upload.jpg`` or ``.webp``).

    A grid in one part gets an upload copy of that part. A split grid gets one copy of `upload` (the
    whole grid as one image, `compose_upload_copy`), listed with the first part; without `upload`, each
    part gets its own (``<stem>-part1.upload.jpg`` ...). Every file carries `parameters` (PNG text chunk or
    EXIF UserComment). Returns, per part, ``{"grid": first format's file, "grids": [one per format],
    "upload": path or None}``.
    """
    from expressiongrid.output.images import save_image, save_upload_copy

    out_dir = Path(out_dir)
    up_ext = ".webp" if (upload_fmt or "").lower() == "webp" else ".jpg"
    written = []
    for index, part in enumerate(parts):
        name = stem if len(parts) == 1 else f"{stem}-part{index + 1}"
        grids = [save_image(out_dir / f"{name}{_SUFFIXES[fmt.lower()]}", part, parameters) for fmt in formats]
        files: dict[str, Any] = {"grid": grids[0], "grids": grids, "upload": None}
        if upload_fmt and (len(parts) == 1 or upload is None):
            files["upload"] = save_upload_copy(out_dir / f"{name}.upload{up_ext}", part, parameters, fmt=upload_fmt)
        elif upload_fmt and index == 0:
            files["upload"] = save_upload_copy(out_dir / f"{stem}.upload{up_ext}", upload, parameters, fmt=upload_fmt)
        written.append(files)
    return written
