"""The local judging web server (stdlib ``http.server``; see docs/judging.md for why no framework).

Routes (everything else is 404):

- ``GET /``                      start page: your name, the questions, a link to the rankings
- ``GET /judge?judge=NAME[&question=ID]``   the next pair for NAME
- ``POST /answer``               form fields ``token`` and ``answer``; redirects to the next pair
- ``GET /cell/<key>.png``        a finished cell's image, looked up by key (never by path)
- ``GET /rankings``, ``GET /rankings.json``   the current Bradley–Terry rankings
- ``GET /static/judge.js|judge.css``

Safety: every piece of text from the study or a judge goes through ``html.escape``; answers need the
one-time token of the page that showed the pair; a POST from another site is refused by its Origin header;
when bound to loopback, requests whose Host is not a loopback name are refused (a web page on the internet
cannot reach this server by DNS rebinding); a strict Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from expressiongrid.errors import UsageError
from expressiongrid.judge.app import InvalidToken, JudgeApp

MAX_BODY = 4096
_STATIC = {"judge.js": "text/javascript; charset=utf-8", "judge.css": "text/css; charset=utf-8"}
_CELL_ROUTE = re.compile(r"^/cell/([^/]+)\.png$")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": under that policy browsers send "Origin: null" with the form POST, and the
    # Origin check below could no longer tell this page from a sandboxed frame elsewhere.
    "Referrer-Policy": "same-origin",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

e = html.escape  # every user-visible string goes through this


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><link rel=\"stylesheet\" href=\"/static/judge.css\"></head>"
        f"<body>{body}<script src=\"/static/judge.js\"></script></body></html>"
    ).encode("utf-8")


def _cell_url(key: str) -> str:
    return "/cell/" + quote(key, safe="") + ".png"


def render_start(app: JudgeApp, default_judge: str | None, error: str | None = None) -> bytes:
    qs = app.questions
    items = "".join(
        f"<li>{e(q.text)} <span class=\"muted\">({e(q.subject)}"
        f"{', ' + e(q.page_label) if q.page_label else ''}; {len(q.items)} images)</span></li>"
        for q in qs
    )
    error_html = f"<p class=\"error\">{e(error)}</p>" if error else ""
    return _page(
        "Judge expressions",
        f"<header><h1>Judge this run</h1><a href=\"/rankings\">Rankings</a></header>{error_html}"
        "<p>You will see two images at a time and a question. Pick the one that fits better, or say they are "
        "equal, or skip. Keys: <kbd>←</kbd>/<kbd>1</kbd> left, <kbd>→</kbd>/<kbd>2</kbd> right, "
        "<kbd>=</kbd>/<kbd>e</kbd> equal, <kbd>s</kbd> skip.</p>"
        "<form method=\"get\" action=\"/judge\"><label>Your name "
        f"<input name=\"judge\" id=\"judge-name\" required maxlength=\"64\" value=\"{e(default_judge or '')}\">"
        "</label> <label>Questions <select name=\"question\" id=\"question-choice\">"
        "<option value=\"\">all, most informative pair first</option>"
        + "".join(f"<option value=\"{e(q.id)}\">{e(q.subject)}{' · ' + e(q.page_label) if q.page_label else ''}"
                  f" ({'expression' if q.kind == 'expression' else 'identity'})</option>" for q in qs)
        + "</select></label> <button type=\"submit\" id=\"start\">Start judging</button></form>"
        f"<h2>Questions</h2><ul>{items}</ul>",
    )


def render_pair(app: JudgeApp, shown, done: int, total: int, question_filter: str | None) -> bytes:
    q = shown.question
    reference = ""
    if q.reference_key:
        reference = (
            f"<div class=\"reference\"><img id=\"reference\" src=\"{e(_cell_url(q.reference_key))}\" "
            f"alt=\"Reference: {e(q.subject)}, neutral\" data-key=\"{e(q.reference_key)}\">"
            f"<div class=\"muted\">Reference: {e(q.subject)}</div></div>"
        )
    page_note = f" <span class=\"muted\">({e(q.page_label)})</span>" if q.page_label else ""
    hidden_question = (f"<input type=\"hidden\" name=\"question\" value=\"{e(question_filter)}\">"
                       if question_filter else "")
    # Images are labelled A/B only: showing the character's name would bias the answer.
    return _page(
        f"{q.text} — judging",
        "<header><span class=\"muted\">Judging as <strong id=\"judge\">"
        f"{e(shown.judge)}</strong> · {done} of {total} pairs answered</span>"
        "<a href=\"/rankings\">Rankings</a></header>"
        f"<h1 id=\"question\" data-question=\"{e(q.id)}\">{e(q.text)}{page_note}</h1>{reference}"
        "<div class=\"pair\">"
        f"<figure><img id=\"left\" src=\"{e(_cell_url(shown.left))}\" alt=\"Left image (A)\" "
        f"data-key=\"{e(shown.left)}\"><figcaption>A</figcaption></figure>"
        f"<figure><img id=\"right\" src=\"{e(_cell_url(shown.right))}\" alt=\"Right image (B)\" "
        f"data-key=\"{e(shown.right)}\"><figcaption>B</figcaption></figure></div>"
        "<form id=\"answer-form\" method=\"post\" action=\"/answer\">"
        f"<input type=\"hidden\" name=\"token\" value=\"{e(shown.token)}\">{hidden_question}"
        "<div class=\"buttons\">"
        "<button name=\"answer\" value=\"left\">A is better <kbd>←</kbd></button>"
        "<button name=\"answer\" value=\"equal\">Equal <kbd>=</kbd></button>"
        "<button name=\"answer\" value=\"skip\">Skip <kbd>s</kbd></button>"
        "<button name=\"answer\" value=\"right\">B is better <kbd>→</kbd></button>"
        "</div></form>",
    )


def render_done(judge: str, total: int) -> bytes:
    return _page(
        "All pairs judged",
        f"<header><h1 id=\"done\">Thank you, {e(judge)}</h1><a href=\"/rankings\">Rankings</a></header>"
        f"<p>You have answered all {total} pairs here. <a href=\"/\">Pick other questions</a>, or start the "
        "server with <code>--allow-repeats</code> to judge pairs a second time.</p>",
    )


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_rankings(data: dict) -> bytes:
    parts = ["<header><h1>Rankings</h1><a href=\"/\">Judge</a></header>",
             f"<p class=\"muted\">{data['answers']} answers from {len(data['judges'])} judge(s)"
             f"{': ' if data['judges'] else ''}"
             + ", ".join(f"<span class=\"judge\">{e(j['name'])}</span> ({j['answers']})" for j in data["judges"])
             + ". Bradley–Terry scores with 95 % intervals; rank intervals from the same uncertainty.</p>"]
    for q in data["questions"]:
        rows = "".join(
            f"<tr><td class=\"num\">{it['rank']}</td><td><img src=\"{e(_cell_url(it['key']))}\" alt=\"\"></td>"
            f"<td>{e(it['label'])}</td><td class=\"num\">{it['score']:.2f}</td>"
            f"<td class=\"num\">{it['ci95'][0]:.2f} … {it['ci95'][1]:.2f}</td>"
            f"<td class=\"num\">{it['rank_ci95'][0]}–{it['rank_ci95'][1]}</td>"
            f"<td class=\"num\">{it['comparisons']:g}</td></tr>"
            for it in q["items"]
        )
        page_note = f" ({e(q['page_label'])})" if q["page_label"] else ""
        parts.append(
            f"<section class=\"question\" data-question=\"{e(q['id'])}\"><h2>{e(q['text'])} "
            f"<span class=\"muted\">{e(q['subject'])}{page_note} · {q['answers']} answers</span></h2>"
            "<table><tr><th>Rank</th><th></th><th>Item</th><th>Score</th><th>95 % interval</th>"
            f"<th>Rank 95 %</th><th>Compared</th></tr>{rows}</table></section>"
        )
    if data["judge_agreement"]:
        rows = "".join(
            f"<tr><td>{e(a['judges'][0])}</td><td>{e(a['judges'][1])}</td><td class=\"num\">{a['shared_pairs']}"
            f"</td><td class=\"num\">{_fmt(a['pair_agreement'])}</td><td class=\"num\">{_fmt(a['kendall_tau'])}"
            "</td></tr>"
            for a in data["judge_agreement"]
        )
        parts.append("<h2>Agreement between judges</h2><table><tr><th>Judge</th><th>Judge</th>"
                     f"<th>Shared pairs</th><th>Same answer</th><th>Kendall τ</th></tr>{rows}</table>")
    return _page("Rankings", "".join(parts))


def make_handler(app: JudgeApp, *, default_judge: str | None = None, check_host: bool = True):
    """A request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "expressiongrid-judge"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - stdlib signature
            pass  # the CLI reports what matters; per-request lines would drown it

        # -- responses ---------------------------------------------------------------------------------

        def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
                  extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in {**_SECURITY_HEADERS, **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            body = _page(f"{status}", f"<h1>{status}</h1><p class=\"error\">{e(message)}</p><p><a href=\"/\">Start"
                         "</a></p>")
            self._send(status, body)

        def _redirect(self, location: str) -> None:
            self._send(HTTPStatus.SEE_OTHER, b"", extra={"Location": location})

        def _host_ok(self) -> bool:
            if not check_host:
                return True
            host = (self.headers.get("Host") or "").strip()
            # Strip the port; IPv6 literals come in brackets.
            name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
            return name in LOOPBACK_NAMES or is_loopback(name)

        # -- GET -----------------------------------------------------------------------------------------

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            if not self._host_ok():
                return self._error(HTTPStatus.BAD_REQUEST, "unexpected Host header")
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            try:
                if path == "/":
                    return self._send(HTTPStatus.OK, render_start(app, default_judge))
                if path == "/judge":
                    return self._judge_page(query)
                if path == "/rankings":
                    return self._send(HTTPStatus.OK, render_rankings(app.rankings()))
                if path == "/rankings.json":
                    body = json.dumps(app.rankings(), ensure_ascii=False).encode("utf-8")
                    return self._send(HTTPStatus.OK, body, "application/json; charset=utf-8")
                if path.startswith("/static/"):
                    return self._static(path[len("/static/"):])
                match = _CELL_ROUTE.match(path)
                if match:
                    return self._cell(match.group(1))
            except UsageError as exc:
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return self._error(HTTPStatus.NOT_FOUND, "not found")

        def _judge_page(self, query: dict) -> None:
            judge = (query.get("judge") or [""])[0]
            question = (query.get("question") or [""])[0] or None  # "" = all questions
            try:
                shown = app.next_pair(judge, question)
            except UsageError as exc:
                return self._send(HTTPStatus.BAD_REQUEST, render_start(app, judge, str(exc)))
            done, total = app.progress(shown.judge if shown else judge.strip(), question)
            if shown is None:
                return self._send(HTTPStatus.OK, render_done(judge.strip(), total))
            return self._send(HTTPStatus.OK, render_pair(app, shown, done, total, question))

        def _static(self, name: str) -> None:
            if name not in _STATIC:  # a fixed list: no path from the URL reaches the file system
                return self._error(HTTPStatus.NOT_FOUND, "not found")
            body = resources.files("expressiongrid.judge").joinpath("static", name).read_bytes()
            return self._send(HTTPStatus.OK, body, _STATIC[name])

        def _cell(self, key: str) -> None:
            path = app.cell_path(key)
            if path is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such cell")
            self._send(HTTPStatus.OK, path.read_bytes(), "image/png")

        # -- POST ----------------------------------------------------------------------------------------

        def do_POST(self):
            if not self._host_ok():
                return self._error(HTTPStatus.BAD_REQUEST, "unexpected Host header")
            origin = self.headers.get("Origin")
            host = self.headers.get("Host", "")
            if origin is not None and urlsplit(origin).netloc != host:
                return self._error(HTTPStatus.FORBIDDEN, "answers are accepted only from this page")
            if urlsplit(self.path).path != "/answer":
                return self._error(HTTPStatus.NOT_FOUND, "not found")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                return self._error(HTTPStatus.BAD_REQUEST, "bad request body")
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            token = (form.get("token") or [""])[0]
            answer = (form.get("answer") or [""])[0]
            question = (form.get("question") or [None])[0]
            try:
                judgement = app.answer(token, answer)
            except InvalidToken as exc:
                return self._error(HTTPStatus.FORBIDDEN, str(exc))
            except UsageError as exc:
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            params = {"judge": judgement.judge}
            if question:
                params["question"] = question
            self._redirect("/judge?" + urlencode(params))

    return Handler


def make_server(app: JudgeApp, host: str = "127.0.0.1", port: int = 0, *,
                default_judge: str | None = None) -> ThreadingHTTPServer:
    """A ready-to-serve HTTP server for ``app`` (port 0 picks a free port: see ``server.server_address``).

    The Host-header check is on whenever the server is bound to a loopback address.
    """
    handler = make_handler(app, default_judge=default_judge, check_host=is_loopback(host))
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                         "(pass another --port, or --port 0 for any free port)") from exc
    server.daemon_threads = True
    return server

