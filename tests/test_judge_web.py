"""The judging server over plain HTTP: answers, tokens, escaping, and what it refuses to serve."""

from __future__ import annotations

import http.client
import os
import re
import threading
from urllib.parse import urlencode

import pytest
from PIL import Image

from expressiongrid.judge.app import InvalidToken, JudgeApp
from expressiongrid.judge.db import load_judgements
from expressiongrid.judge.rankings import agreement_with_scores, rankings_for_store
from expressiongrid.judge.server import make_server
from expressiongrid.store import cell_file_for
from helpers import cell_key, make_run


@pytest.fixture()
def run_store(tmp_path):
    store = make_run(tmp_path / "run")
    yield store
    store.close()


@pytest.fixture()
def server(run_store):
    app = JudgeApp(run_store, seed=0)
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, app
    srv.shutdown()
    srv.server_close()


def request(srv, method: str, path: str, body: str | None = None, headers: dict | None = None):
    """A raw HTTP request (http.client sends the path exactly as given, ``../`` included)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    hdrs = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    if body is not None:
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def page_token(html: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', html).group(1)


# -------------------------------------------------------------------------------------------- questions


def test_questions_cover_expressions_across_characters_and_identity_per_character(run_store):
    app = JudgeApp(run_store, seed=0)
    by_id = {q.id: q for q in app.questions}
    smile = by_id["expr:smile:p0"]
    assert smile.text == "Which face shows smiling, closed mouth better?"
    assert sorted(smile.labels.values()) == ["Alice", "Bob", "Carol", "Reference"]
    ident = by_id["ident:alice:p0"]
    assert ident.text == "Which looks more like the same person as this reference?"
    assert ident.reference_key == cell_key(run_store, "neutral", "alice")
    assert sorted(ident.labels.values()) == ["angry", "smiling, closed mouth"]
    assert len(app.questions) == 3 + 4


def test_failed_cells_are_not_judged(tmp_path):
    store = make_run(tmp_path / "run", failed={("smile", "bob"), ("smile", "carol"), ("smile", "alice")})
    ids = {q.id for q in JudgeApp(store).questions}
    assert "expr:smile:p0" not in ids  # only the reference cell is left in that row
    assert "ident:bob:p0" not in ids  # bob has neutral + angry only: one item, nothing to compare


# ----------------------------------------------------------------------------------------- answering


def test_answer_through_http_is_stored_with_judge_and_time(server, run_store):
    srv, app = server
    status, _, body = request(srv, "GET", "/judge?" + urlencode({"judge": "Ann"}))
    assert status == 200
    html = body.decode()
    left = re.search(r'id="left"[^>]*data-key="([^"]+)"', html).group(1)
    right = re.search(r'id="right"[^>]*data-key="([^"]+)"', html).group(1)
    question = re.search(r'data-question="([^"]+)"', html).group(1)
    status, headers, _ = request(srv, "POST", "/answer", urlencode({"token": page_token(html), "answer": "right"}))
    assert status == 303 and headers["Location"] == "/judge?judge=Ann"
    [row] = load_judgements(run_store.connection)
    assert (row.question_id, row.left_key, row.right_key, row.answer, row.judge) == (
        question, left, right, "right", "Ann")
    assert row.created_at > 1.7e9 and row.seconds is not None and row.seconds >= 0


def test_tokens_are_one_time_and_required(server, run_store):
    srv, app = server
    _, _, body = request(srv, "GET", "/judge?judge=Ann")
    token = page_token(body.decode())
    assert request(srv, "POST", "/answer", urlencode({"answer": "left"}))[0] == 403
    assert request(srv, "POST", "/answer", urlencode({"token": "made-up", "answer": "left"}))[0] == 403
    assert request(srv, "POST", "/answer", urlencode({"token": token, "answer": "maybe"}))[0] == 400
    assert request(srv, "POST", "/answer", urlencode({"token": token, "answer": "left"}))[0] == 303
    assert request(srv, "POST", "/answer", urlencode({"token": token, "answer": "right"}))[0] == 403
    assert [j.answer for j in load_judgements(run_store.connection)] == ["left"]
    with pytest.raises(InvalidToken):
        app.answer(token, "left")


def test_cross_site_posts_and_foreign_hosts_are_refused(server, run_store):
    srv, _ = server
    _, _, body = request(srv, "GET", "/judge?judge=Ann")
    form = urlencode({"token": page_token(body.decode()), "answer": "left"})
    assert request(srv, "POST", "/answer", form, {"Origin": "http://evil.example"})[0] == 403
    assert request(srv, "POST", "/answer", form, {"Origin": "null"})[0] == 403  # e.g. a sandboxed frame
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name as Host.
    assert request(srv, "GET", "/rankings.json", headers={"Host": "evil.example:80"})[0] == 400
    assert request(srv, "POST", "/answer", form, {"Host": "evil.example"})[0] == 400
    assert load_judgements(run_store.connection) == []
    # The page's own origin is fine.
    port = srv.server_address[1]
    assert request(srv, "POST", "/answer", form, {"Origin": f"http://127.0.0.1:{port}"})[0] == 303


def test_one_judge_never_gets_the_same_pair_twice(run_store):
    app = JudgeApp(run_store, seed=1)
    seen = set()
    while (shown := app.next_pair("Ann")) is not None:
        pair = (shown.question.id, *sorted((shown.left, shown.right)))
        assert pair not in seen
        seen.add(pair)
        app.answer(shown.token, "skip" if len(seen) % 4 == 0 else "left")
    # 3 expression rows of 4 cells (6 pairs each) + 4 identity questions of 2 cells (1 pair each).
    assert len(seen) == 3 * 6 + 4 * 1 == app.progress("Ann")[1] == app.progress("Ann")[0]
    assert app.next_pair("Bob") is not None
    repeating = JudgeApp(run_store, seed=1, allow_repeats=True)
    assert repeating.next_pair("Ann") is not None


def test_judge_names_are_checked(server):
    srv, _ = server
    status, _, body = request(srv, "GET", "/judge?judge=%20%20")
    assert status == 400 and b"judge name is needed" in body
    assert request(srv, "GET", "/judge?" + urlencode({"judge": "x" * 65}))[0] == 400
    assert request(srv, "GET", "/judge?judge=Ann&question=nope")[0] == 400


def test_names_that_look_the_same_are_one_judge(server, run_store):
    # "José" typed precomposed, then with a combining accent and a trailing space: one judge, whose
    # progress carries on, whose pairs are not asked again and who counts once in the rankings.
    srv, app = server
    seen = set()
    for i, name in enumerate(["Jos\u00e9", "Jose\u0301 ", "  Jos\u00e9\u00a0"]):
        status, _, body = request(srv, "GET", "/judge?" + urlencode({"judge": name}))
        html = body.decode()
        assert status == 200 and f"· {i} of 22 pairs answered" in html
        pair = (re.search(r'data-question="([^"]+)"', html).group(1),
                *sorted(re.search(rf'id="{side}"[^>]*data-key="([^"]+)"', html).group(1) for side in ("left", "right")))
        assert pair not in seen
        seen.add(pair)
        status, headers, _ = request(srv, "POST", "/answer", urlencode({"token": page_token(html), "answer": "left"}))
        assert status == 303 and headers["Location"] == "/judge?" + urlencode({"judge": "Jos\u00e9"})
    assert {j.judge for j in load_judgements(run_store.connection)} == {"Jos\u00e9"}
    assert rankings_for_store(run_store)["judges"] == [{"name": "Jos\u00e9", "answers": 3}]
    # Invisible characters are refused, not dropped, so a name never silently becomes another one.
    for invisible in ("Jos\u00e9\u200b", "Jos\u00e9\u202e"):
        status, _, body = request(srv, "GET", "/judge?" + urlencode({"judge": invisible}))
        assert status == 400 and b"judge name contains" in body


# ------------------------------------------------------------------------------------- files and paths


def test_cells_are_served_by_key_only(server, run_store):
    srv, _ = server
    key = cell_key(run_store, "smile", "bob")
    status, headers, data = request(srv, "GET", f"/cell/{key}.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert data == (run_store.run_dir / cell_file_for(key)).read_bytes()
    run_dir = run_store.run_dir.resolve()
    for path in [
        "/cell/../run.sqlite",
        "/cell/..%2frun.sqlite.png",
        "/cell/%2e%2e%2frun.sqlite.png",
        f"/cell/..%2F{cell_file_for(key).replace('/', '%2F')}",
        f"/cell/{cell_file_for(key)}",
        "/cell//etc/passwd.png",
        f"/cell/{run_dir}/run.sqlite.png",
        "/cell/%2Fetc%2Fpasswd.png",
        "/../run.sqlite",
        "/run.sqlite",
        f"/{cell_file_for(key)}",
        "/etc/passwd",
        "/static/../db.py",
        "/static/%2e%2e/app.py",
        "/static/..%2F..%2Frun.sqlite",
        f"/cell/{key[:-1]}.png",
    ]:
        status, _, data = request(srv, "GET", path)
        assert status == 404, path
        assert b"SQLite" not in data and b"root:" not in data


def test_a_symlink_out_of_the_run_folder_is_not_followed(server, run_store, tmp_path):
    srv, _ = server
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret outside the run")
    key = cell_key(run_store, "angry", "carol")
    target = run_store.run_dir / cell_file_for(key)
    target.unlink()
    os.symlink(secret, target)
    status, _, data = request(srv, "GET", f"/cell/{key}.png")
    assert status == 404 and b"secret" not in data


def test_serving_does_not_change_the_run_files(server, run_store):
    srv, _ = server
    before = {p: p.read_bytes() for p in (run_store.run_dir / "cells").rglob("*.png")}
    for key in [c.key for c in run_store.cells()]:
        request(srv, "GET", f"/cell/{key}.png")
    assert request(srv, "PUT", f"/cell/{key}.png", "x")[0] == 501
    assert request(srv, "DELETE", f"/cell/{key}.png")[0] == 501
    after = {p: p.read_bytes() for p in (run_store.run_dir / "cells").rglob("*.png")}
    assert before == after


def test_pages_carry_a_strict_content_security_policy(server):
    srv, _ = server
    _, headers, _ = request(srv, "GET", "/")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


# ------------------------------------------------------------------------------------------- escaping


def test_study_and_judge_text_is_escaped(tmp_path):
    evil_rows = [("neutral", "neutral"), ("x", "<script>alert(1)</script> & \"quoted\"")]
    evil_cols = [("a", "<img src=x onerror=alert(2)>"), ("b", "B"), ("c", "C")]
    store = make_run(tmp_path / "run", rows=evil_rows, cols=evil_cols)
    app = JudgeApp(store, seed=0)
    srv = make_server(app, "127.0.0.1", 0, default_judge="<b>bold</b>")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        start = request(srv, "GET", "/")[2].decode()
        judge_page = request(srv, "GET", "/judge?" + urlencode({"judge": "<i>Eve</i>", "question": "expr:x:p0"}))
        page = judge_page[2].decode()
        token = page_token(page)
        request(srv, "POST", "/answer", urlencode({"token": token, "answer": "left"}))
        ranks = request(srv, "GET", "/rankings")[2].decode()
        for html in (start, page, ranks):
            assert "<script>alert" not in html and "<img src=x" not in html and "<i>Eve" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quoted&#34;" in page
        assert "&lt;b&gt;bold&lt;/b&gt;" in start
        assert "&lt;i&gt;Eve&lt;/i&gt;" in page and "&lt;i&gt;Eve&lt;/i&gt;" in ranks
        assert "&lt;img src=x onerror=alert(2)&gt;" in ranks
        # Stored as typed: escaping is for display only.
        assert load_judgements(store.connection)[0].judge == "<i>Eve</i>"
    finally:
        srv.shutdown()
        srv.server_close()
        store.close()


# ------------------------------------------------------------------------------------------- rankings


def test_rankings_for_store_follow_the_answers(run_store):
    app = JudgeApp(run_store, seed=0)
    order = ["carol", "bob", "alice", "reference"]  # the "true" smile strength, best first
    rank_of = {cell_key(run_store, "smile", c): i for i, c in enumerate(order)}
    for judge in ("Ann", "Ben"):
        while (shown := app.next_pair(judge, "expr:smile:p0")) is not None:
            better_left = rank_of[shown.left] < rank_of[shown.right]
            app.answer(shown.token, "left" if better_left else "right")
    data = rankings_for_store(run_store)
    smile = next(q for q in data["questions"] if q["id"] == "expr:smile:p0")
    assert [it["label"] for it in smile["items"]] == ["Carol", "Bob", "Alice", "Reference"]
    assert smile["answers"] == 12 and smile["judges"] == ["Ann", "Ben"]
    top = smile["items"][0]
    assert top["ci95"][0] < top["score"] < top["ci95"][1] and top["rank_ci95"][0] == 1
    assert data["judges"] == [{"name": "Ann", "answers": 6}, {"name": "Ben", "answers": 6}]
    [pair] = data["judge_agreement"]
    assert pair["pair_agreement"] == 1.0 and pair["shared_pairs"] == 6 and pair["kendall_tau"] == 1.0
    # Unjudged questions are present, with no preference.
    angry = next(q for q in data["questions"] if q["id"] == "expr:angry:p0")
    assert angry["answers"] == 0 and {it["score"] for it in angry["items"]} == {0.0}

    auto = {cell_key(run_store, "smile", c): s for c, s in zip(order, [0.9, 0.7, 0.4, 0.1])}
    agree = agreement_with_scores(run_store, auto, kind="expression")
    assert agree["kendall_tau"] == 1.0 and agree["pairwise_accuracy"] == 1.0 and agree["answers"] == 12
    wrong = {k: -v for k, v in auto.items()}
    assert agreement_with_scores(run_store, wrong, kind="expression")["kendall_tau"] == -1.0


def test_rankings_json_endpoint(server, run_store):
    srv, app = server
    shown = app.next_pair("Ann")
    app.answer(shown.token, "left")
    import json

    status, headers, body = request(srv, "GET", "/rankings.json")
    data = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert data["answers"] == 1 and data["judges"] == [{"name": "Ann", "answers": 1}]
    q = next(q for q in data["questions"] if q["id"] == shown.question.id)
    assert q["items"][0]["key"] == shown.left  # the one chosen now ranks first
    page = request(srv, "GET", "/rankings")[2].decode()
    assert "1 answer from 1 judge: " in page and "· 1 answer</span>" in page  # counts read as English
    assert "answers from" not in page and "judge(s)" not in page


def test_cells_finished_while_judging_join_the_questions(tmp_path, monkeypatch):
    import expressiongrid.judge.app as app_module

    store = make_run(tmp_path / "run", failed={("angry", "carol")})
    app = JudgeApp(store, seed=0)
    angry = app.question("expr:angry:p0")
    assert len(angry.items) == 3
    key = cell_key(store, "angry", "carol")
    rel = cell_file_for(key)
    (store.run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "red").save(store.run_dir / rel)
    store.mark_done(key, file=rel, parameters="x", seconds=0.1, run_id=store.latest_run_id())
    assert app.cell_path(key) is None  # not yet re-read
    monkeypatch.setattr(app_module, "RELOAD_SECONDS", 0.0)
    app.next_pair("Ann")
    assert len(app.question("expr:angry:p0").items) == 4 and app.cell_path(key) is not None
    store.close()
