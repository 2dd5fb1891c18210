"""The grid viewer (`expressiongrid view`): the page in headless Chromium, its files, and --serve."""

from __future__ import annotations

import http.client
import threading

import pytest
from click.testing import CliRunner
from PIL import Image
from helpers import make_run
from helpers import BOLD_LABEL, EVIL_LABEL, labelled_columns

from expressiongrid.analysis.pipeline import analyze_run
from expressiongrid.analysis.validation import build_validation_run
from expressiongrid.cli import main
from expressiongrid.report.viewer import THUMB_SIDE, make_viewer_server, write_viewer

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def analysed_viewer(tmp_path_factory):
    """An analysed run (5 columns x 4 rows of real face photos, labels with HTML in them) and its viewer."""
    run_dir = tmp_path_factory.mktemp("viewer") / "run"
    build_validation_run(run_dir, labelled_columns()).close()
    analyze_run(run_dir)
    return run_dir, write_viewer(run_dir)


@pytest.fixture()
def page(browser):
    context = browser.new_context(offline=True)  # the page must work from the folder, offline
    # Record what the copy button puts on the clipboard (file:// pages get no real clipboard in tests).
    context.add_init_script("""
        window.__copied = [];
        Object.defineProperty(navigator, 'clipboard', {value: {writeText: function (t) {
            window.__copied.push(t); return Promise.resolve(); }}});
    """)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type in
          ("error", "warning") else None)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    pg.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.set_default_timeout(15000)
    yield pg
    context.close()
    assert problems == [], problems


def _headers(page):
    return page.locator("#grid thead th").all_inner_texts()[1:]


def _row_labels(page):
    return page.locator("#grid tbody th").all_inner_texts()


def test_viewer_renders_every_cell_without_console_errors(analysed_viewer, page):
    run_dir, files = analysed_viewer
    assert files.index == run_dir / "viewer" / "index.html" and files.cells == 20
    page.goto(files.index.as_uri())
    assert page.title().startswith("validation")
    assert page.locator("#grid td[data-key]").count() == 20
    assert _headers(page) == ["Reference", BOLD_LABEL, "Stiff", "Swap", EVIL_LABEL]
    assert _row_labels(page) == ["neutral", "mouth open", "eyes shut", "mouth corners down"]
    page.wait_for_function("Array.from(document.images).filter(i => i.closest('#grid')).every(i => i.complete)")
    widths = page.eval_on_selector_all("#grid img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == 20 and min(widths) > 0
    # Analysis scores on each cell.
    scores = page.locator("#grid td .scores").all_inner_texts()
    assert len(scores) == 20 and all("fidelity" in s for s in scores)
    assert any("face no" in s for s in scores)  # the no-face column says so


def test_labels_containing_html_stay_text(analysed_viewer, page):
    page.goto(analysed_viewer[1].index.as_uri())
    assert page.locator("#grid b").count() == 0 and page.locator("script").count() == 2
    page.locator("#grid tbody tr").first.locator("td").nth(4).click()
    assert page.inner_text("#cell-title") == f"neutral × {EVIL_LABEL}"
    html = analysed_viewer[1].index.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<b>bold" not in html


def test_axis_swap_puts_characters_down_the_rows(analysed_viewer, page):
    page.goto(analysed_viewer[1].index.as_uri())
    page.select_option("#rows-axis", label="Character")
    assert _row_labels(page) == ["Reference", BOLD_LABEL, "Stiff", "Swap", EVIL_LABEL]
    assert _headers(page) == ["neutral", "mouth open", "eyes shut", "mouth corners down"]
    assert page.input_value("#cols-axis") == "0"  # expressions moved to the columns
    # The cell at (Swap, eyes shut) is the same cell as before the swap.
    cell = page.locator("#grid tbody tr").nth(3).locator("td").nth(2)
    assert cell.get_attribute("title") == "eyes shut × Swap"
    # Characters on pages: one character at a time, chosen in the page menu.
    page.select_option("#pages-axis", label="Character")
    assert page.is_visible("#page-select") and page.locator("#grid td[data-key]").count() == 4
    page.select_option("#page-select", label=EVIL_LABEL)
    assert page.locator("#grid td").first.get_attribute("title").endswith(EVIL_LABEL)


def test_click_enlarges_a_cell_with_its_parameters_and_copy_button(analysed_viewer, page):
    run_dir, files = analysed_viewer
    page.goto(files.index.as_uri())
    assert not page.is_visible("#cell-view")
    page.locator("#grid tbody tr").nth(1).locator("td").nth(1).click()
    assert page.is_visible("#cell-view")
    assert page.inner_text("#cell-title") == f"mouth open × {BOLD_LABEL}"
    page.wait_for_function("document.getElementById('full').complete")
    src = page.get_attribute("#full", "src")
    assert src.startswith("../cells/")
    with Image.open(run_dir / src[3:]) as im:  # the cell's own file at full size, not the thumbnail
        assert page.evaluate("document.getElementById('full').naturalWidth") == im.width
        parameters = im.info["parameters"]
    assert page.inner_text("#cell-parameters") == parameters
    assert "fidelity" in page.inner_text("#cell-scores")
    page.click("#copy-parameters")
    page.wait_for_function("document.getElementById('copy-status').textContent === 'copied'")
    assert page.evaluate("window.__copied") == [parameters]
    page.keyboard.press("Escape")
    assert not page.is_visible("#cell-view")


def test_cells_open_and_compare_from_the_keyboard(analysed_viewer, page):
    _, files = analysed_viewer
    page.goto(files.index.as_uri())
    first = page.locator("#grid tbody td").first
    for _ in range(80):  # past the header's controls and the rows & columns panel
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "TD":
            break
    assert page.evaluate("document.activeElement.dataset.key") == first.get_attribute("data-key")
    page.keyboard.press("Enter")
    assert page.is_visible("#cell-view")
    assert page.evaluate("document.activeElement.id") == "close-cell"  # focus moves into the view
    page.keyboard.press("Escape")
    assert not page.is_visible("#cell-view")
    assert page.evaluate("document.activeElement.dataset.key") == first.get_attribute("data-key")  # and back
    page.keyboard.press("Space")
    assert page.is_visible("#cell-view")
    page.keyboard.press("Tab")  # from Close
    page.click("#compare-button")
    assert page.evaluate("document.activeElement.dataset.key") == first.get_attribute("data-key")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the second cell of the pair
    assert page.is_visible("#compare-view")
    assert len(set(page.eval_on_selector_all("#compare-view img", "els => els.map(e => e.getAttribute('src'))"))) == 2


def test_columns_can_be_hidden_and_reordered_and_the_grid_zoomed(analysed_viewer, page):
    page.goto(analysed_viewer[1].index.as_uri())
    page.click("#values-toggle")
    columns = page.locator("#values-cols .value-item")
    columns.nth(2).locator("input.show").uncheck()  # hide "Stiff"
    assert _headers(page) == ["Reference", BOLD_LABEL, "Swap", EVIL_LABEL]
    page.locator("#values-cols .value-item").nth(0).locator("button.later").click()  # Reference after Hopper
    assert _headers(page) == [BOLD_LABEL, "Reference", "Swap", EVIL_LABEL]
    assert page.locator("#grid tbody tr").first.locator("td").count() == 4
    page.fill("#zoom", "320")
    page.dispatch_event("#zoom", "input")
    img = page.locator("#grid td img").first
    assert img.bounding_box()["width"] == pytest.approx(320, abs=1)
    assert img.get_attribute("src").startswith("../cells/")  # past the thumbnail size: the full image


def test_two_cells_side_by_side(analysed_viewer, page):
    page.goto(analysed_viewer[1].index.as_uri())
    first = page.locator("#grid tbody tr").nth(1).locator("td").nth(0)
    second = page.locator("#grid tbody tr").nth(1).locator("td").nth(3)
    first.click()
    page.click("#compare-button")
    assert page.is_visible("#compare-hint") and not page.is_visible("#cell-view")
    second.click()
    assert page.is_visible("#compare-view")
    captions = page.locator("#compare-view figcaption").all_inner_texts()
    assert captions[0].startswith("mouth open × Reference") and captions[1].startswith("mouth open × Swap")
    srcs = page.eval_on_selector_all("#compare-view img", "els => els.map(e => e.getAttribute('src'))")
    assert len(set(srcs)) == 2 and all(s.startswith("../cells/") for s in srcs)


def test_a_20_by_30_grid_uses_small_lazy_thumbnails(tmp_path, page):
    rows = [(f"r{i}", f"row {i}") for i in range(20)]
    cols = [(f"c{j}", f"column {j}") for j in range(30)]
    store = make_run(tmp_path / "run", rows=rows, cols=cols)
    for record in store.cells():  # cells bigger than a thumbnail, as real ones are
        Image.new("RGB", (512, 512), (record.row_index * 12, record.col_index * 8, 90)).save(tmp_path / "run" / record.file)
    store.close()
    files = write_viewer(tmp_path / "run")
    assert files.cells == 600 and files.thumbnails == 600
    thumbs = sorted((tmp_path / "run" / "viewer" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 600
    with Image.open(thumbs[0]) as im:
        assert max(im.size) == THUMB_SIDE
    assert write_viewer(tmp_path / "run").thumbnails == 0  # made once, reused
    page.goto(files.index.as_uri())
    assert page.locator("#grid td[data-key]").count() == 600
    loading = page.eval_on_selector_all("#grid td img", "els => els.map(e => [e.loading, e.getAttribute('src')])")
    assert len(loading) == 600 and all(lazy == "lazy" and src.startswith("thumbs/") for lazy, src in loading)
    # Row and column labels stay in view while the grid scrolls.
    wrap = page.locator("#grid-wrap").bounding_box()
    page.eval_on_selector("#grid-wrap", "el => { el.scrollTop = 2500; el.scrollLeft = 3000; }")
    page.wait_for_function("document.getElementById('grid-wrap').scrollTop > 0")
    header = page.locator("#grid thead th").nth(5).bounding_box()
    row_label = page.locator("#grid tbody th").nth(15).bounding_box()
    assert abs(header["y"] - wrap["y"]) <= 2 and abs(row_label["x"] - wrap["x"]) <= 2


def _get(server, path, host=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{server.server_address[1]}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.getheader("Location"), body


def test_serve_hands_out_only_the_viewer_and_images(analysed_viewer):
    run_dir, files = analysed_viewer
    server = make_viewer_server(run_dir, 0)
    assert server.server_address[0] == "127.0.0.1"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        assert _get(server, "/")[:2] == (302, "/viewer/index.html")
        status, _, body = _get(server, "/viewer/index.html")
        assert status == 200 and body == files.index.read_bytes()
        cell = next((run_dir / "cells").rglob("*.png")).relative_to(run_dir).as_posix()
        assert _get(server, "/" + cell)[0] == 200
        for private in ("/run.sqlite", "/cells/../run.sqlite", "/viewer/../run.sqlite", "/%2e%2e/run.sqlite"):
            assert _get(server, private)[0] == 404, private
        assert _get(server, "/viewer/index.html", host="evil.example")[0] == 400
    finally:
        server.shutdown()
        server.server_close()


def test_view_command_writes_the_page(tmp_path):
    make_run(tmp_path / "run").close()
    result = CliRunner().invoke(main, ["view", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"viewer: {tmp_path / 'run' / 'viewer' / 'index.html'} (12 cells, 12 new thumbnails)" in result.output
    missing = CliRunner().invoke(main, ["view", str(tmp_path / "nothing")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_view_serve_command_serves_the_page_until_ctrl_c(tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    make_run(tmp_path / "run").close()
    proc = subprocess.Popen([sys.executable, "-m", "expressiongrid", "view", str(tmp_path / "run"), "--serve",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        url = re.search(r"at (http://127\.0\.0\.1:\d+/viewer/index\.html)", lines[1]).group(1)
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200 and b'id="viewer-data"' in resp.read()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_a_damaged_cell_image_is_shown_without_a_picture_and_named(tmp_path):
    store = make_run(tmp_path / "run", rows=[("a", "a"), ("b", "b")], cols=[("reference", "reference")])
    damaged, fine = store.cells()
    store.close()
    (tmp_path / "run" / damaged.file).write_bytes(b"not a png any more")  # a bad disk or a bad copy
    result = CliRunner().invoke(main, ["view", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "1 new thumbnails" in result.output  # the readable cell still gets its thumbnail
    assert "1 cell image(s) cannot be read" in result.stderr and damaged.file in result.stderr
    assert (tmp_path / "run" / "viewer" / "index.html").is_file()
    assert (tmp_path / "run" / "viewer" / "thumbs" / f"{fine.key}.jpg").is_file()
    assert not (tmp_path / "run" / "viewer" / "thumbs" / f"{damaged.key}.jpg").exists()
