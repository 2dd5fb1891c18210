"""User text with an unclosed direction override (U+202E) cannot reorder the page text after it.

Measured in a real Chromium: the first and last characters of the text that follows the label are located on
screen; read left to right, the first must come first. Before isolation the override ran on to the end of
the line and drew that text backwards.
"""

from __future__ import annotations

import threading
from urllib.parse import urlencode

import pytest
from helpers import make_run

from expressiongrid.judge.app import JudgeApp
from expressiongrid.judge.server import make_server
from expressiongrid.report.viewer import write_viewer

pytestmark = pytest.mark.slow

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE, left open
PDI = "\u2069"  # POP DIRECTIONAL ISOLATE with nothing to close: it must not end the label's isolation early
ROWS = [("neutral", "neutral"), ("smile", f"{PDI}{RLO}smile")]
COLS = [("anna", f"{RLO}Anna"), ("b", "B")]

_LEFT_TO_RIGHT = """([selector, text]) => {
  const root = document.querySelector(selector);
  const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    const at = node.data.indexOf(text);
    if (at < 0) continue;
    const x = (i) => { const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
                       return r.getBoundingClientRect().left; };
    return [x(at), x(at + text.length - 1)];
  }
  return null;
}"""


def _reads_left_to_right(page, selector: str, text: str) -> bool:
    """Whether `text` (after user text in `selector`) is drawn in reading order, first letter leftmost."""
    found = page.evaluate(_LEFT_TO_RIGHT, [selector, text])
    assert found is not None, f"{text!r} not in {selector}"
    first, last = found
    return first < last


@pytest.fixture()
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(15000)
    yield pg
    context.close()


def test_judging_pages_isolate_labels(tmp_path, page):
    store = make_run(tmp_path / "run", rows=ROWS, cols=COLS)
    srv = make_server(JudgeApp(store, seed=0), "127.0.0.1", 0, default_judge="Ann")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        page.goto(base + "/")  # the list of questions: "Which face shows ‮smile better? (…; 2 images)"
        assert _reads_left_to_right(page, "ul li:nth-child(2)", "better?")
        assert _reads_left_to_right(page, "ul li:nth-child(2)", "images)")
        page.goto(base + "/judge?" + urlencode({"judge": "Eve", "question": "expr:smile:p0"}))
        assert _reads_left_to_right(page, "#question", "better?")
        with page.expect_navigation():
            page.keyboard.press("ArrowLeft")
        page.goto(base + "/rankings")
        assert _reads_left_to_right(page, 'section[data-question="expr:smile:p0"] h2', "answer")
    finally:
        srv.shutdown()
        srv.server_close()
        store.close()


def test_viewer_isolates_labels_in_titles_and_captions(tmp_path, page):
    make_run(tmp_path / "run", rows=ROWS, cols=COLS).close()
    page.goto(write_viewer(tmp_path / "run").index.as_uri())
    page.locator("#grid td[data-key]").nth(3).click()  # smile × B
    assert _reads_left_to_right(page, "#cell-title", "× B")
