"""Judging through a real headless Chromium (Debian's package, driven by Playwright).

CI installs the browser in .ci/extra-setup; these tests fail (not skip) without it, because the page is
the feature.
"""

from __future__ import annotations

import threading
from urllib.parse import urlencode

import pytest
from helpers import cell_key, make_run

from expressiongrid.judge.app import JudgeApp
from expressiongrid.judge.db import load_judgements
from expressiongrid.judge.server import make_server

# Generates images, starts processes, drives a browser or loads models: left out of `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


@pytest.fixture()
def live(tmp_path):
    store = make_run(tmp_path / "run")
    app = JudgeApp(store, seed=3)
    srv = make_server(app, "127.0.0.1", 0, default_judge="Ann")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", store
    srv.shutdown()
    srv.server_close()
    store.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    pg.set_default_timeout(15000)
    yield pg
    context.close()
    assert errors == [], errors  # no script errors, and nothing from the page ever ran alert()


def _displayed(pg):
    return (pg.get_attribute("#question", "data-question"), pg.get_attribute("#left", "data-key"),
            pg.get_attribute("#right", "data-key"))


def test_judging_pairs_in_the_page_stores_exactly_those_answers(live, page):
    base, store = live
    page.goto(base + "/")
    assert page.input_value("#judge-name") == "Ann"  # --judge fills the name in
    page.fill("#judge-name", "Zoë")
    with page.expect_navigation():
        page.click("#start")
    page.wait_for_selector("#left")
    assert page.inner_text("#judge") == "Zoë"

    # Each way of answering once: buttons and every keyboard shortcut.
    actions = [
        ("click", "button[value=left]", "left"),
        ("key", "ArrowRight", "right"),
        ("key", "=", "equal"),
        ("key", "s", "skip"),
        ("key", "1", "left"),
        ("key", "2", "right"),
        ("key", "e", "equal"),
        ("key", "ArrowLeft", "left"),
        ("click", "button[value=right]", "right"),
    ]
    expected = []
    for kind, what, answer in actions:
        shown = _displayed(page)
        assert shown[1] != shown[2]
        # Both images really load (served by key from the run folder).
        for img in ("#left", "#right"):
            assert page.eval_on_selector(img, "i => i.complete && i.naturalWidth") == 64
        with page.expect_navigation():
            if kind == "click":
                page.click(what)
            else:
                page.keyboard.press(what)
        page.wait_for_selector("#left")
        expected.append((*shown, answer, "Zoë"))

    stored = [(j.question_id, j.left_key, j.right_key, j.answer, j.judge) for j in load_judgements(store.connection)]
    assert stored == expected
    pairs = [(q, *sorted((a, b))) for q, a, b, _, _ in expected]
    assert len(set(pairs)) == len(pairs)  # no pair asked twice
    # The progress line counts what was answered.
    assert f"{len(actions)} of 22 pairs answered" in page.inner_text("header")


def test_identity_question_shows_the_characters_neutral_reference(live, page):
    base, store = live
    page.goto(base + "/judge?" + urlencode({"judge": "Ann", "question": "ident:bob:p0"}))
    assert page.inner_text("#question") == "Which looks more like the same person as this reference?"
    assert page.get_attribute("#reference", "data-key") == cell_key(store, "neutral", "bob")
    assert page.eval_on_selector("#reference", "i => i.complete && i.naturalWidth") == 64
    shown = {page.get_attribute("#left", "data-key"), page.get_attribute("#right", "data-key")}
    assert shown == {cell_key(store, "smile", "bob"), cell_key(store, "angry", "bob")}
    with page.expect_navigation():
        page.keyboard.press("ArrowLeft")
    # One pair only in this question: the judge is done with it.
    assert page.inner_text("#done") == "Thank you, Ann"
    [row] = load_judgements(store.connection)
    assert row.question_id == "ident:bob:p0" and row.answer == "left"


def test_a_held_key_answers_once(live, page):
    base, store = live
    page.goto(base + "/judge?judge=Ann")
    page.wait_for_selector("#left")
    first = _displayed(page)
    with page.expect_navigation():
        page.keyboard.down("ArrowLeft")
        page.keyboard.down("ArrowLeft")  # auto-repeat sends keydown again
        page.keyboard.up("ArrowLeft")
    page.wait_for_selector("#left")
    rows = load_judgements(store.connection)
    assert [(j.left_key, j.right_key, j.answer) for j in rows] == [(first[1], first[2], "left")]


def test_typing_a_name_does_not_trigger_shortcuts(live, page):
    base, store = live
    page.goto(base + "/")
    page.fill("#judge-name", "")
    page.type("#judge-name", "Sue 12=e")  # contains s, 1, 2, =, e
    assert page.input_value("#judge-name") == "Sue 12=e"
    assert load_judgements(store.connection) == []


def test_rankings_page_shows_the_answers(live, page):
    base, store = live
    page.goto(base + "/")
    page.select_option("#question-choice", "expr:smile:p0")
    with page.expect_navigation():  # to the page's load event: its key handler (judge.js) is attached by then
        page.click("#start")
    bob = cell_key(store, "smile", "bob")
    for _ in range(6):  # every pair of the 4 smile cells; Bob always wins, otherwise the left one
        page.wait_for_selector("#left")
        left, right = page.get_attribute("#left", "data-key"), page.get_attribute("#right", "data-key")
        assert page.get_attribute("#question", "data-question") == "expr:smile:p0"  # the choice sticks
        with page.expect_navigation():
            page.keyboard.press("ArrowRight" if right == bob else "ArrowLeft")
    assert page.inner_text("#done").startswith("Thank you")
    page.click("text=Rankings")
    section = page.locator("section[data-question='expr:smile:p0']")
    first_row = section.locator("tr").nth(1)
    assert first_row.locator("td").nth(2).inner_text() == "Bob"
    assert first_row.locator("td").nth(0).inner_text() == "1"
    assert "6 answers" in section.locator("h2").inner_text()


def test_hostile_labels_and_names_show_as_text_and_never_run(tmp_path, page):
    rows = [("neutral", "neutral"), ("x", "<img src=x onerror=alert(1)>wink")]
    cols = [("a", "<script>alert(2)</script>"), ("b", "B"), ("c", "C")]
    store = make_run(tmp_path / "evil", rows=rows, cols=cols)
    srv = make_server(JudgeApp(store, seed=0), "127.0.0.1", 0, default_judge="\"><script>alert(3)</script>")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        page.goto(base + "/")
        assert page.input_value("#judge-name") == "\"><script>alert(3)</script>"
        assert "<img src=x onerror=alert(1)>wink" in page.inner_text("body")
        page.click("#start")
        page.goto(base + "/judge?" + urlencode({"judge": "<b onmouseover=alert(4)>Eve</b>", "question": "expr:x:p0"}))
        assert page.inner_text("#question") == "Which face shows <img src=x onerror=alert(1)>wink better?"
        assert page.inner_text("#judge") == "<b onmouseover=alert(4)>Eve</b>"
        with page.expect_navigation():
            page.keyboard.press("ArrowLeft")
        page.goto(base + "/rankings")
        assert "<script>alert(2)</script>" in page.inner_text("body")
        assert page.locator("script:not([src])").count() == 0
    finally:
        srv.shutdown()
        srv.server_close()
        store.close()
