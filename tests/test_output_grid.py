"""Grid compositor: A1111 geometry, labels that never vanish, failed cells, pages within limits."""

from __future__ import annotations

import pytest
from PIL import Image, ImageChops

from conftest import load_jsonl
from expressiongrid.errors import UsageError
from expressiongrid.output.grid import (
    ELLIPSIS,
    MIN_UPLOAD_CELL,
    UPLOAD_LIMITS,
    GridLimits,
    GridStyle,
    _font,
    compose_grid,
    compose_upload_copy,
    failed_cell,
    fit_label,
    image_grid,
    label_size,
    plan_grid,
    upload_cell_size,
    write_grid,
)
from expressiongrid.output.images import read_parameters

LAYOUT = load_jsonl("grid_layout.jsonl")
ANNOTATION_CASES = [c for c in LAYOUT if "cell" in c]
IMAGE_GRID_CASES = [c for c in LAYOUT if "image_grid_default_rows_n" in c]


def _colour_cells(n_rows, n_cols, size):
    return [
        [Image.new("RGB", size, (40 + 60 * c % 200, 30 + 70 * r % 200, 90)) for c in range(n_cols)]
        for r in range(n_rows)
    ]


def _has_ink(image, box):
    region = image.crop(box).convert("L")
    return region.getextrema()[0] < 128


@pytest.mark.parametrize("case", ANNOTATION_CASES, ids=lambda c: f"{c['cell']}-{c['cols']}x{c['rows']}")
def test_geometry_follows_a1111(case):
    w, h = case["cell"]
    exp = case["expected"]
    cells = _colour_cells(case["rows"], case["cols"], (w, h))
    # min_font_size=1 turns off our readability floor so A1111's own numbers apply.
    style = GridStyle(margin=case["margin"], min_font_size=1)
    plan = plan_grid(case["rows"], case["cols"], (w, h), case["ver_texts"], case["hor_texts"], style=style)
    layout = plan.layout
    assert layout.font_size == exp["fontsize"]
    assert layout.line_spacing == exp["line_spacing"]
    assert layout.label_width == exp["pad_left"]
    (page,) = compose_grid(cells, case["ver_texts"], case["hor_texts"], style=style)
    assert page.width == exp["output_size"][0]
    if exp["pad_top"] == 0:
        assert page.size == tuple(exp["output_size"])
    else:
        # A1111 measures ink boxes of its font; ours uses the bundled font's line height: same rule,
        # header = tallest column label + 2 x line spacing.
        assert layout.header_height >= exp["fontsize"] + 2 * exp["line_spacing"] - 2
        assert page.height == exp["image_grid_size"][1] + layout.header_height + case["margin"] * (case["rows"] - 1)
    # Cells sit where A1111 puts them: (pad_left + (w + margin) * c, pad_top + (h + margin) * r).
    for r in range(case["rows"]):
        for c in range(case["cols"]):
            x = layout.label_width + (w + case["margin"]) * c
            y = layout.header_height + (h + case["margin"]) * r
            assert ImageChops.difference(page.crop((x, y, x + w, y + h)), cells[r][c]).getbbox() is None


def test_a1111_wrap_rule_and_row_label_in_one_line():
    size, lines = fit_label("row two which is longer", 225, 3, 20, 10)
    assert size == 20 and lines == ["row two which is longer"]
    size, lines = fit_label("Steps: 10 and a much longer explanation", 160, 3, 20, 10)
    assert size == 20 and lines == ["Steps: 10 and a", "much longer", "explanation"]  # greedy, word by word
    font = _font(20, None)
    assert all(font.getlength(line) <= 160 for line in lines)


@pytest.mark.parametrize("case", IMAGE_GRID_CASES, ids=lambda c: str(c["image_grid_default_rows_n"]))
def test_per_cell_batch_grid_uses_a1111_rows(case):
    n = case["image_grid_default_rows_n"]
    grid = image_grid([Image.new("RGB", (8, 8), "red")] * n)
    assert list(grid.size) == case["expected"]["size"]


def test_a_label_of_thousands_of_characters_is_cut_with_few_measurements(monkeypatch):
    """A long label (a pasted paragraph as a Prompt S/R value) is cut by a search over its length: measured
    once per character, a 3,000-character label took seconds per label and a 100,000-character one minutes."""
    from expressiongrid.output.fonts import LabelFont

    calls = []
    measure = LabelFont.getlength
    monkeypatch.setattr(LabelFont, "getlength", lambda self, text: calls.append(len(text)) or measure(self, text))
    for text, max_lines in (("x" * 3000, 3), ("word " * 3000, 2)):
        calls.clear()
        size, lines = fit_label(text, 100, max_lines, 24, 10)
        font = _font(size, None)
        assert size == 10 and lines[-1].endswith(ELLIPSIS) and len(lines[-1]) > 3
        assert all(font.getlength(line) <= 100 for line in lines)
        assert len(calls) < 1000, len(calls)  # one per character was 3,000+


def test_long_labels_wrap_then_shrink_then_ellipsize_but_never_vanish():
    size, lines = fit_label("supercalifragilisticexpialidociousloraversionthree", 100, 3, 24, 10)
    assert size == 10 and len(lines) == 1 and lines[0].endswith(ELLIPSIS) and len(lines[0]) > 3
    size, lines = fit_label("supercalifragilisticexpialidocious_lora_v3", 100, 3, 24, 10)
    assert lines[0].endswith(ELLIPSIS) and lines[-1] == "lora_v3"  # the distinguishing tail survives
    size, lines = fit_label("word " * 40, 100, 2, 24, 10)
    assert size == 10 and len(lines) == 2 and lines[-1].endswith(ELLIPSIS)
    size, lines = fit_label("moderately long label text", 100, 3, 24, 10)
    assert 10 < size < 24 and not any(ELLIPSIS in line for line in lines)
    font = _font(10, None)
    size, lines = fit_label("x" * 50, 3, 1, 20, 10)  # a sliver of space: still something visible
    assert lines and lines[0] and lines[0].endswith(ELLIPSIS)
    assert all(font.getlength(line) <= 100 for line in fit_label("y" * 80, 100, 2, 20, 10)[1])


def test_file_like_names_wrap_at_underscores_before_shrinking():
    size, lines = fit_label("Gal_Gadot_v3_by_someone_with_long_names", 512, 3, 40, 10)
    # Full size, broken only after underscores (how many lines depends on the font's widths).
    assert size == 40 and 2 <= len(lines) <= 3 and "".join(lines) == "Gal_Gadot_v3_by_someone_with_long_names"
    assert all(line.endswith("_") for line in lines[:-1])


def test_every_label_is_drawn_even_on_tiny_cells():
    labels = ["reference", "a_character_with_an_extremely_long_name_v2", "bob"]
    rows = ["neutral", "teasing flirty playful suggestive seductive smirking squinting aroused horny"]
    cells = [[Image.new("RGB", (64, 64), "white") for _ in labels] for _ in rows]
    (page,) = compose_grid(cells, rows, labels, title="Seed study")
    plan = plan_grid(2, 3, (64, 64), rows, labels, "Seed study")
    layout = plan.layout
    assert layout.font_size == 10  # readable floor instead of A1111's 5 px
    top = layout.title_height
    for c in range(3):
        x = layout.label_width + 64 * c
        assert _has_ink(page, (x, top, x + 64, top + layout.header_height)), labels[c]
    for r in range(2):
        y = top + layout.header_height + 64 * r
        assert _has_ink(page, (0, y, layout.label_width, y + 64)), rows[r]
    assert _has_ink(page, (0, 0, page.width, layout.title_height))


def test_labels_are_drawn_literally():
    text = "{expression} <lora:x:1> [a:b:0.5] \\n %s"
    size, lines = fit_label(text, 400, 3, 20, 10)
    assert " ".join(lines) == text
    cells = [[Image.new("RGB", (64, 64), "white")]]
    (page,) = compose_grid(cells, [text], [text])
    assert page.width > 64


def test_failed_cell_is_marked_in_the_grid():
    cells = _colour_cells(2, 2, (64, 64))
    cells[1][0] = None
    (page,) = compose_grid(cells, ["a", "b"], ["x", "y"])
    layout = plan_grid(2, 2, (64, 64), ["a", "b"], ["x", "y"]).layout
    x, y = layout.label_width, layout.header_height + 64
    marked = page.crop((x, y, x + 64, y + 64))
    colours = {c for _, c in marked.getcolors(64 * 64)}
    assert any(r > 150 and g < 80 and b < 80 for r, g, b in colours)  # the red cross
    assert (154, 154, 154) in colours  # grey background
    assert ImageChops.difference(marked, failed_cell(64, 64)).getbbox() is None


def test_smaller_cells_are_centred():
    cells = [[Image.new("RGB", (64, 64), "blue"), Image.new("RGB", (32, 32), "red")]]
    (page,) = compose_grid(cells, [], [])
    assert page.size == (128, 64)
    assert page.getpixel((64 + 16, 16)) == (255, 0, 0)
    assert page.getpixel((64 + 2, 2)) == (255, 255, 255)


def test_margins_and_border():
    cells = _colour_cells(2, 2, (64, 64))
    style = GridStyle(margin=6, border=10)
    (page,) = compose_grid(cells, ["a", "b"], ["x", "y"], style=style)
    layout = plan_grid(2, 2, (64, 64), ["a", "b"], ["x", "y"], style=style).layout
    assert page.width == 2 * 10 + layout.label_width + 2 * 64 + 6
    assert page.height == 2 * 10 + layout.header_height + 2 * 64 + 6


def test_oversized_grid_is_split_into_pages_covering_every_cell_once():
    limits = GridLimits(max_side=400)
    cells = _colour_cells(7, 9, (64, 64))
    rows = [f"row {i}" for i in range(7)]
    cols = [f"col {j}" for j in range(9)]
    pages = compose_grid(cells, rows, cols, title="Study", limits=limits)
    assert len(pages) > 1
    seen = []
    for page in pages:
        assert max(page.size) <= 400
        info = page.info["grid_page"]
        assert info.count == len(pages)
        seen += [(r, c) for r in info.rows for c in info.cols]
    assert sorted(seen) == [(r, c) for r in range(7) for c in range(9)]
    row_counts = {len(p.info["grid_page"].rows) for p in pages}
    assert max(row_counts) - min(row_counts) <= 1  # balanced, no nearly empty last page


def test_plan_respects_webp_jpeg_and_pixel_limits(monkeypatch):
    rows, cols = [f"r{i}" for i in range(9)], [f"c{j}" for j in range(40)]
    webp = plan_grid(9, 40, (512, 512), rows, cols, "t", fmt="webp")
    assert webp.page_count > 1 and all(max(p.size) <= 16_383 for p in webp.pages)
    assert "webp image can hold" in webp.describe()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    small = plan_grid(9, 13, (256, 256), rows, cols[:13], fmt="png")
    assert small.page_count > 1 and all(p.size[0] * p.size[1] <= 1_000_000 for p in small.pages)
    jpeg = plan_grid(200, 3, (512, 512), [f"r{i}" for i in range(200)], cols[:3], fmt="jpeg",
                     limits=GridLimits(max_side=65_535))
    assert jpeg.page_count > 1 and all(p.size[1] <= 65_535 for p in jpeg.pages)


@pytest.mark.parametrize("n_cols", [11, 12])
def test_seed_study_sized_grid_is_one_png_page(n_cols):
    rows, cols = [f"expression {i}" for i in range(9)], [f"character {j}" for j in range(n_cols)]
    plan = plan_grid(9, n_cols, (512, 512), rows, cols, "Seed study", fmt="png")
    assert plan.page_count == 1 and plan.pages[0].size == plan.unsplit_size
    assert plan.describe().startswith("1 grid page of")


def _covers_every_cell_once(plan, n_rows, n_cols):
    seen = sorted((r, c) for p in plan.pages for r in p.rows for c in p.cols)
    return seen == [(r, c) for r in range(n_rows) for c in range(n_cols)]


def test_split_grid_is_near_square_blocks_of_whole_rows_and_columns():
    labels = [f"label {i}" for i in range(30)]
    plan = plan_grid(30, 30, (512, 512), labels, labels, "Big", fmt="png")
    assert 1 < plan.page_count <= 6  # not fifteen 2-row strips
    assert _covers_every_cell_once(plan, 30, 30)
    for page in plan.pages:
        w, h = page.size
        assert max(w, h) / min(w, h) < 1.5 and w * h <= Image.MAX_IMAGE_PIXELS
        assert len(page.rows) >= 10 and len(page.cols) >= 10
    assert plan.to_dict()["page_sizes"] == [list(p.size) for p in plan.pages]


def test_each_split_page_has_its_own_labels_and_title():
    cells = _colour_cells(4, 4, (64, 64))
    rows, cols = [f"row {i}" for i in range(4)], [f"col {j}" for j in range(4)]
    pages = compose_grid(cells, rows, cols, "Study", max_cells_per_page=4)
    assert len(pages) == 4
    full = plan_grid(4, 4, (64, 64), rows, cols, "Study").layout
    for page in pages:
        info = page.info["grid_page"]
        assert (len(info.rows), len(info.cols)) == (2, 2)
        layout_top = full.title_height
        # Column labels above the page's own two columns and row labels beside its own two rows.
        assert _has_ink(page, (full.label_width, layout_top, page.width, layout_top + full.header_height))
        assert _has_ink(page, (0, layout_top + full.header_height, full.label_width, page.height))
        assert _has_ink(page, (0, 0, page.width, full.title_height))


def test_max_cells_per_page_is_honoured():
    plan = plan_grid(6, 8, (64, 64), [], [], max_cells_per_page=12)
    assert plan.page_count >= 4 and all(len(p.rows) * len(p.cols) <= 12 for p in plan.pages)
    assert _covers_every_cell_once(plan, 6, 8)
    assert "max_cells_per_page" in plan.describe()
    assert plan_grid(6, 8, (64, 64), [], [], max_cells_per_page=48).page_count == 1


def test_upload_copy_is_one_image_within_civitai_limits_even_when_pages_are_split():
    labels = [f"label {i}" for i in range(30)]
    assert plan_grid(30, 30, (512, 512), labels, labels, "Big").page_count > 1
    size = upload_cell_size(30, 30, (512, 512), labels, labels, "Big")
    assert size is not None and MIN_UPLOAD_CELL <= size[0] < 512
    upload = plan_grid(30, 30, size, labels, labels, "Big", limits=UPLOAD_LIMITS["jpeg"])
    assert upload.page_count == 1 and UPLOAD_LIMITS["jpeg"].fits(*upload.unsplit_size)
    # A grid too large for one useful image: no single copy (each page then gets its own).
    assert upload_cell_size(300, 300, (512, 512)) is None


def test_write_grid_writes_one_upload_copy_of_the_whole_grid(tmp_path, monkeypatch):
    import expressiongrid.output.grid as grid_mod

    cells = _colour_cells(4, 4, (128, 128))
    rows, cols = [f"row {i}" for i in range(4)], [f"col {j}" for j in range(4)]
    pages = compose_grid(cells, rows, cols, "Study", max_cells_per_page=4)
    monkeypatch.setitem(grid_mod.UPLOAD_LIMITS, "jpeg", GridLimits(max_side=560, max_bytes=50_000_000))
    upload = compose_upload_copy(cells, rows, cols, "Study")
    assert upload is not None and max(upload.size) <= 560
    assert upload.width < plan_grid(4, 4, (128, 128), rows, cols, "Study").unsplit_size[0]  # cells scaled down
    files = write_grid(pages, tmp_path, "grid", "p\nSteps: 1, Sampler: Euler, Seed: 1", upload=upload)
    assert [f["grid"].name for f in files] == [f"grid-part{i}.png" for i in range(1, 5)]
    copies = [f["upload"] for f in files if f["upload"]]
    assert [c.name for c in copies] == ["grid.upload.jpg"]
    with Image.open(copies[0]) as im:
        assert im.size == upload.size
    assert read_parameters(copies[0]).endswith("Seed: 1")


def _label_pixels(text, **kw):
    (page,) = compose_grid([[Image.new("RGB", (128, 128), "white")]], [text], ["column"], **kw)
    layout = plan_grid(1, 1, (128, 128), [text], ["column"], **kw).layout
    return page.crop((0, layout.header_height, layout.label_width, page.height))


@pytest.mark.parametrize("a, b", [("Zoë", "Zoü"), ("李", "王"), ("Ωμέγα", "Омега"), ("Beyoncé", "Beyonce")])
def test_labels_in_any_script_render_as_themselves(a, b):
    """Each pair differs in one character: a font that lacked them would draw the same box for both."""
    assert ImageChops.difference(_label_pixels(a), _label_pixels(b)).getbbox() is not None
    box = _label_pixels("\U0010fffd" * len(a))  # what a character no font has looks like
    assert ImageChops.difference(_label_pixels(a), box).getbbox() is not None
    assert plan_grid(1, 2, (128, 128), [a], [b, "x"]).warnings == []


def test_text_without_spaces_wraps_between_characters():
    size, lines = fit_label("李王张刘陈杨黄赵吴周徐孙马朱胡", 100, 3, 20, 10)
    assert size == 20 and len(lines) > 1 and "".join(lines) == "李王张刘陈杨黄赵吴周徐孙马朱胡"
    assert all(_font(20, None).getlength(line) <= 100 for line in lines)


def test_every_letter_is_drawn_by_a_font_that_has_it_and_words_stay_in_one_font():
    from expressiongrid.output.fonts import _has_glyph, label_font

    text = "Zoë Ωμέγα Ἀθῆναι Ёжик 李王 Beyoncé"
    pieces = label_font(40).pieces(text)
    assert "".join(piece for _, piece in pieces) == text
    for path, piece in pieces:
        assert all(_has_glyph(path, ch) for ch in piece), piece  # no decomposed or boxed letter
    for word in text.split():
        assert sum(word in piece for _, piece in pieces) == 1, word  # each word whole in one font


def test_a_right_to_left_override_in_a_label_does_not_reverse_it():
    """U+202E would draw "smile\u202eyppah" as "smilehappy": labels are drawn in the order they were
    written, and the plan says the controls are left out."""
    tricked = "smile\u202eyppah"
    assert ImageChops.difference(_label_pixels(tricked), _label_pixels("smileyppah")).getbbox() is None
    assert ImageChops.difference(_label_pixels(tricked), _label_pixels("smilehappy")).getbbox() is not None
    isolated = "a \u2067b c\u2069 \u200fd"  # isolates and marks reorder too
    assert ImageChops.difference(_label_pixels(isolated), _label_pixels("a b c d")).getbbox() is None
    (warning,) = plan_grid(1, 1, (128, 128), [tricked], ["x"]).warnings
    assert "U+202E" in warning and "left out where the label is drawn" in warning and "'smile\\u202eyppah'" in warning
    assert plan_grid(1, 1, (128, 128), ["שלום"], ["x"]).warnings == []  # a right-to-left script is no control


def test_a_character_no_font_has_is_reported_before_drawing():
    plan = plan_grid(1, 1, (128, 128), ["hieroglyph \U00013000"], ["x"])
    assert len(plan.warnings) == 1 and "U+13000" in plan.warnings[0] and "[output] font" in plan.warnings[0]


def test_a_font_file_given_by_the_user_is_used_first(tmp_path):
    from expressiongrid.output.fonts import font_chain

    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    assert font_chain(dejavu)[0] == dejavu
    assert ImageChops.difference(_label_pixels("Zoë"), _label_pixels("Zoë", style=GridStyle(font_path=dejavu))).getbbox()
    with pytest.raises(UsageError, match="no such file"):
        font_chain(str(tmp_path / "missing.ttf"))


def test_labels_grow_with_the_grid_and_turn_bold():
    assert label_size((512, 512), 3, GridStyle()) == (512 + 512) // 25  # A1111's size for a small grid
    big = label_size((512, 512), 12, GridStyle())
    assert big > 40 and big <= 512 // 6
    # Readable at the assumed viewing width: the label's pixel height scaled to 1200 px wide.
    width = plan_grid(9, 12, (512, 512), ["r"] * 9, ["c"] * 12).unsplit_size[0]
    assert big * 1200 / width >= 11
    assert plan_grid(9, 12, (512, 512), ["r"] * 9, ["c"] * 12).layout.bold
    assert not plan_grid(2, 2, (64, 64), ["r"] * 2, ["c"] * 2).layout.bold
    assert label_size((512, 512), 12, GridStyle(view_width=None)) == 40


def test_axis_titles_and_caption_are_drawn_in_their_own_bands():
    cells = _colour_cells(2, 2, (128, 128))
    plain = compose_grid(cells, ["a", "b"], ["x", "y"])[0]
    kw = dict(row_title="Expression", col_title="Character", caption="Model: tiny, Sampler: Euler, Steps: 4, CFG scale: 7, Seed: 1")
    (page,) = compose_grid(cells, ["a", "b"], ["x", "y"], **kw)
    layout = plan_grid(2, 2, (128, 128), ["a", "b"], ["x", "y"], **kw).layout
    assert layout.axis_height > 0 and layout.caption_height > 0
    assert page.height == plain.height + layout.axis_height + layout.caption_height
    assert _has_ink(page, (layout.label_width, 0, page.width, layout.axis_height))  # "Character"
    assert _has_ink(page, (0, layout.axis_height, layout.label_width, layout.axis_height + layout.header_height))
    assert _has_ink(page, (0, page.height - layout.caption_height, page.width, page.height))


def test_cell_too_big_for_format_is_a_usage_error_before_generation():
    with pytest.raises(UsageError, match="exceeds"):
        plan_grid(1, 1, (20_000, 512), ["a"], ["b"], fmt="webp")


def test_write_grid_writes_pages_and_upload_copies_with_metadata(tmp_path):
    cells = _colour_cells(3, 3, (64, 64))
    pages = compose_grid(cells, ["a", "b", "c"], ["x", "y", "z"], limits=GridLimits(max_side=200))
    files = write_grid(pages, tmp_path, "grid", "prompt\nSteps: 1, Sampler: Euler, Seed: 1")
    assert len(files) == len(pages) > 1
    assert files[0]["grid"].name == "grid-part1.png" and files[0]["upload"].name == "grid-part1.upload.jpg"
    for entry in files:
        assert read_parameters(entry["grid"]).endswith("Seed: 1")
        assert read_parameters(entry["upload"]).endswith("Seed: 1")
    single = write_grid(pages[:1], tmp_path / "one", "grid", None, formats=("png", "webp"), upload_fmt="webp")
    assert [p.name for p in single[0]["grids"]] == ["grid.png", "grid.webp"]
    assert single[0]["upload"].name == "grid.upload.webp"


def test_cells_from_files(tmp_path):
    path = tmp_path / "c.png"
    Image.new("RGB", (64, 64), "green").save(path)
    (page,) = compose_grid([[path, None]], [], [])
    assert page.size == (128, 64) and page.getpixel((10, 10)) == (0, 128, 0)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("abcdefghij XYZ_-,.:()[]0123456789\n")), min_size=1, max_size=120)
    .filter(lambda t: t.strip()),
    width=st.integers(30, 400),
    max_lines=st.integers(1, 4),
    font_size=st.integers(10, 48),
)
def test_fitted_labels_always_fit_and_never_vanish(text, width, max_lines, font_size):
    size, lines = fit_label(text, width, max_lines, font_size, 10)
    font = _font(size, None)
    assert 10 <= size <= font_size
    assert 1 <= len(lines) <= max_lines
    assert any(line.strip() for line in lines)
    assert all(font.getlength(line) <= width for line in lines)
    if not any(ELLIPSIS in line for line in lines):
        assert "".join("".join(lines).split()) == "".join(text.split())  # nothing lost
