"""The HTML report in a real headless Chromium (Debian's package, driven by Playwright).

Fails (does not skip) without the browser: the page is the feature. CI installs it in .ci/extra-setup.
"""

from __future__ import annotations

import pytest
from helpers import face_columns
from helpers import BOLD_LABEL, EVIL_LABEL, add_grids, labelled_columns

from expressiongrid.analysis.pipeline import analyze_run
from expressiongrid.analysis.validation import build_validation_run
from expressiongrid.report import write_report

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

assert face_columns  # the run's images come from there (via labelled_columns)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    build_validation_run(run_dir, labelled_columns()).close()
    add_grids(run_dir, 1)
    analyze_run(run_dir)
    return write_report(run_dir).html


@pytest.fixture()
def page(browser):
    context = browser.new_context(offline=True)  # self-contained: nothing may need the network
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type in
          ("error", "warning") else None)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    pg.set_default_timeout(15000)
    yield pg
    context.close()
    assert problems == [], problems


def test_report_renders_with_images_and_no_console_errors(report_file, page):
    page.goto(report_file.as_uri())
    page.wait_for_load_state("load")
    assert page.title().startswith("validation")
    # Every inline image decoded (a broken data URI would have naturalWidth 0).
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : -1)")
    assert len(widths) == 21 and min(widths) > 0
    assert page.locator("table.heat td.cell").count() == 20
    assert page.locator("svg rect").count() > 8
    assert page.locator("h2").all_inner_texts() == [
        "Expression × character", "Characters", "Expressions", "Answers", "Plots", "Human judging", "Grids"]


def test_labels_containing_html_are_shown_as_text(report_file, page):
    page.goto(report_file.as_uri())
    headers = page.locator("table.heat tr").first.locator("th").all_inner_texts()
    assert BOLD_LABEL in headers and EVIL_LABEL in headers
    assert page.locator("table.heat b").count() == 0  # no element was made from the label
    assert page.locator("script").count() == 2  # the label did not become a script


def test_clicking_a_cell_shows_its_details_as_text(report_file, page):
    page.goto(report_file.as_uri())
    assert not page.is_visible("#details")
    cells = page.locator("table.heat td.cell")
    # The last column is the no-face column labelled with a script tag; its first cell is the neutral row.
    page.locator("table.heat tr").nth(2).locator("td.cell").nth(4).click()
    assert page.is_visible("#details")
    title = page.inner_text("#details-title")
    assert title == f"mouth open × {EVIL_LABEL}"
    details = page.inner_text("#details-list")
    assert "no (a finding: this cell shows no face)" in details
    page.locator("table.heat tr").nth(2).locator("td.cell").nth(1).click()
    details = page.inner_text("#details-list")
    assert BOLD_LABEL in details and "fidelity" in details and "AU25" in details
    page.click("#details-close")
    assert not page.is_visible("#details")
    assert cells.count() == 20


def test_cell_details_open_and_close_from_the_keyboard(report_file, page):
    page.goto(report_file.as_uri())
    cell = page.locator("table.heat tr").nth(2).locator("td.cell").nth(1)
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('cell')"):
            break
    first = page.locator("table.heat td.cell").first
    assert page.evaluate("document.activeElement.dataset.key") == first.get_attribute("data-key")
    page.keyboard.press("Enter")
    assert page.is_visible("#details")
    page.keyboard.press("Escape")
    assert not page.is_visible("#details")
    assert page.evaluate("document.activeElement.dataset.key") == first.get_attribute("data-key")
    cell.focus()
    page.keyboard.press("Space")
    assert page.is_visible("#details") and BOLD_LABEL in page.inner_text("#details-title")


LONG_LABEL = "Grace Hopper, rear admiral and computer pioneer, v2 (final, 128 dim)"


def test_long_character_labels_fit_the_charts_and_are_kept_whole_in_their_tooltips(tmp_path, page):
    columns = face_columns()
    columns = {"reference": columns["reference"], "hopper": (LONG_LABEL, columns["hopper"][1]),
               "stiff": ("1 " + LONG_LABEL, columns["stiff"][1])}
    run_dir = tmp_path / "run"
    build_validation_run(run_dir, columns).close()
    analyze_run(run_dir)
    page.goto(write_report(run_dir).html.as_uri())
    assert page.locator("svg").count() >= 2
    for svg in page.locator("svg").all():  # no label drawn outside its chart (cut off at the page edge)
        box = svg.bounding_box()
        for text in svg.locator("text").all():
            t = text.bounding_box()
            assert box["x"] - 1 <= t["x"] and t["x"] + t["width"] <= box["x"] + box["width"] + 1, text.text_content()
    titles = page.eval_on_selector_all("svg text > title", "els => els.map(e => e.textContent)")
    assert LONG_LABEL in titles and "1 " + LONG_LABEL in titles
    assert "4 expressions × 3 columns, 12 cells made." in page.inner_text("body")
