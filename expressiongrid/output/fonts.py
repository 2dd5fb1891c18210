"""Fonts for grid labels: a fallback chain so any label text renders, and a note when a glyph cannot.

Pillow draws each string with one font file and shows a box for every character that file lacks, and its
bundled font covers little beyond ASCII (with it alone, "Zoë" and "李" are boxes). Labels are therefore drawn
with a chain of fonts: each character uses the first font in the chain that has it.

The chain, first found first (see docs/grids-and-metadata.md, "Fonts"):

1. the study's ``[output] font`` (a TrueType/OpenType file or collection), when set;
2. Noto Sans CJK (Latin, Greek, Cyrillic, Chinese, Japanese, Korean): Debian/Ubuntu ``fonts-noto-cjk``,
   Fedora ``google-noto-sans-cjk-fonts``, Arch ``noto-fonts-cjk``; on Windows Microsoft YaHei, on macOS
   Hiragino Sans GB / Arial Unicode;
3. DejaVu Sans (Latin, Greek, Cyrillic, many symbols): Debian ``fonts-dejavu-core`` and most Linux systems;
4. Pillow's bundled font (ASCII only), so a grid is always drawn.

Characters no font in the chain has are reported by `missing_glyphs` before anything is generated.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from expressiongrid.errors import UsageError
from expressiongrid.text import without_bidi_controls

__all__ = ["LabelFont", "SYSTEM_FONTS", "font_chain", "label_font", "missing_glyphs"]

# (regular, bold) file names of each system font, in chain order.
SYSTEM_FONTS: list[tuple[str, str]] = [
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"),
    ("/usr/share/fonts/google-noto-sans-cjk-fonts/NotoSansCJK-Regular.ttc",
     "/usr/share/fonts/google-noto-sans-cjk-fonts/NotoSansCJK-Bold.ttc"),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", "/usr/share/fonts/noto-cjk/NotoSansCJK-Bold.ttc"),
    ("C:/Windows/Fonts/msyh.ttc", "C:/Windows/Fonts/msyhbd.ttc"),
    ("/System/Library/Fonts/Hiragino Sans GB.ttc", "/System/Library/Fonts/Hiragino Sans GB.ttc"),
    ("/Library/Fonts/Arial Unicode.ttf", "/Library/Fonts/Arial Unicode.ttf"),
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ("/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf", "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans-Bold.ttf"),
    ("/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf"),
    ("C:/Windows/Fonts/segoeui.ttf", "C:/Windows/Fonts/segoeuib.ttf"),
]
_NOT_A_CHARACTER = "\U0010fffd"  # private use, plane 16: no label font draws it, so it shows the "missing" box


@lru_cache(maxsize=32)
def font_chain(path: str | None = None, bold: bool = False) -> tuple[str | None, ...]:
    """The font files labels are drawn with, in order; ``None`` stands for Pillow's bundled font.

    Only one file per font family is kept (the first found), so a chain is short.
    """
    chain: list[str | None] = []
    if path:
        if not Path(path).expanduser().is_file():
            raise UsageError(f"grid font {path}: no such file; give a .ttf, .otf or .ttc file ([output] font)")
        chain.append(str(Path(path).expanduser()))
    families: set[str] = set()
    for regular, heavy in SYSTEM_FONTS:
        family = Path(regular).stem.split("-")[0]
        if family in families:
            continue
        chosen = heavy if bold and os.path.isfile(heavy) else regular
        if os.path.isfile(chosen):
            chain.append(chosen)
            families.add(family)
    chain.append(None)
    return tuple(chain)


@lru_cache(maxsize=64)
def _load(path: str | None, size: int, basic: bool = False) -> ImageFont.FreeTypeFont:
    engine = ImageFont.Layout.BASIC if basic else None
    if path is None:
        return ImageFont.load_default(size=size)
    try:
        return ImageFont.truetype(path, size, layout_engine=engine)
    except OSError as exc:
        raise UsageError(f"grid font {path}: cannot load it as a TrueType/OpenType font ({exc})") from None


def _signature(font: ImageFont.FreeTypeFont, ch: str) -> tuple:
    mask = font.getmask(ch)
    return mask.size, bytes(mask), font.getlength(ch)


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch) in ("Mn", "Me", "Cf", "Cc")


@lru_cache(maxsize=65536)
def _has_glyph(path: str | None, ch: str) -> bool:
    """Does the font file draw `ch` as itself (not as its "missing glyph" box)? Measured at 24 px."""
    if ch.isspace() or _is_mark(ch):
        return True  # marks and controls go with the character before them
    # Basic layout maps one character to one glyph: with text shaping, a character the font lacks may be
    # decomposed (έ into ε and a misplaced accent) and look present.
    font = _load(path, 24, basic=True)
    return _signature(font, ch) != _signature(font, _NOT_A_CHARACTER)


@dataclass(frozen=True)
class LabelFont:
    """One size of a font chain: measures and draws text, each character in the first font that has it."""

    chain: tuple[str | None, ...]
    size: int

    @property
    def primary(self) -> ImageFont.FreeTypeFont:
        return _load(self.chain[0], self.size)

    def runs(self, text: str) -> list[tuple[ImageFont.FreeTypeFont, str]]:
        """`pieces` with each font loaded at this size."""
        return [(_load(path, self.size), piece) for path, piece in self.pieces(text)]

    def pieces(self, text: str) -> list[tuple[str | None, str]]:
        """`text` split into pieces that one font of the chain draws: (font file, piece).

        A word is drawn in the first font that has all its characters, so a word never mixes two fonts'
        letters when one font could draw it whole; otherwise each character goes to the first font that
        has it. Characters no font has stay with the first font (drawn as its box; `missing_glyphs`
        reports them). Direction controls (U+202E, ...) are left out: a label is drawn in the order it was
        written, never reversed by an invisible character (``grid.plan_grid`` says so for such a label)."""
        text = without_bidi_controls(text)
        out: list[tuple[int, str]] = []

        def add(index: int, piece: str) -> None:
            if out and out[-1][0] == index:
                out[-1] = (index, out[-1][1] + piece)
            else:
                out.append((index, piece))

        for word in re.split(r"(\s+)", text):
            if not word:
                continue
            if word.isspace():
                add(out[-1][0] if out else 0, word)
                continue
            whole = next((i for i, p in enumerate(self.chain) if all(_has_glyph(p, ch) for ch in word)), None)
            if whole is not None:
                add(whole, word)
                continue
            for ch in word:
                if out and _is_mark(ch):
                    add(out[-1][0], ch)  # a combining mark stays with its letter
                else:
                    add(next((i for i, p in enumerate(self.chain) if _has_glyph(p, ch)), 0), ch)
        return [(self.chain[i], piece) for i, piece in out]

    def getlength(self, text: str) -> float:
        return sum(font.getlength(piece) for font, piece in self.runs(text))

    def getmetrics(self) -> tuple[int, int]:
        """Ascent and descent covering every font of the chain the text may use."""
        metrics = [_load(p, self.size).getmetrics() for p in self.chain]
        return max(a for a, _ in metrics), max(d for _, d in metrics)

    def draw(self, draw, xy: tuple[float, float], text: str, fill, *, align: str = "centre",
             stroke_width: int = 0, stroke_fill=None) -> None:
        """Draw `text` with its top (the chain's ascent line) at ``xy[1]``; ``xy[0]`` is the centre of the
        line (``align="centre"``) or its left end (``"left"``)."""
        x, top = xy
        if align == "centre":
            x -= self.getlength(text) / 2
        baseline = top + self.getmetrics()[0]
        for font, piece in self.runs(text):
            draw.text((x, baseline), piece, font=font, fill=fill, anchor="ls", stroke_width=stroke_width,
                      stroke_fill=stroke_fill)
            x += font.getlength(piece)


def label_font(size: int, path: str | None = None, bold: bool = False) -> LabelFont:
    """The label font chain at `size` px (`path`: the study's ``[output] font``)."""
    return LabelFont(font_chain(path, bold), size)


def missing_glyphs(texts, path: str | None = None) -> dict[str, list[str]]:
    """For each text that has characters no font of the chain can draw: those characters (in order, once)."""
    chain = font_chain(path)
    out: dict[str, list[str]] = {}
    for text in texts:
        missing = [ch for ch in dict.fromkeys(str(text)) if not any(_has_glyph(p, ch) for p in chain)]
        if missing:
            out[str(text)] = missing
    return out
