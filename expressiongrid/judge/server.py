"""The local judging web server (stdlib ``http.server``; see docs/judging.md for why no framework).

Routes (everything else is 404):

- ``GET /``                      start page: your name, the questions, a link to the rankings
- ``GET /judge?judge=NAME[&question=ID]``   the next pair for NAME
- ``POST /answer``               form fields ``token`` and ``answer``; redirects to the next pair
- ``GET /cell/<key>.png``        a finished cell's image, looked up by key (never by path)
- ``GET /rankings``, ``GET /rankings.json``   the current Bradley–Terry rankings
- ``GET /static/judge.js|judge.css``

Safety: pages come from the autoescaping templates in ``templates/judge/``, so every piece of text from the
study or a judge is HTML-escaped; answers need the
one-time token of the page that showed the pair; a POST from another site is refused by its Origin header;
when bound to loopback, requests whose Host is not a loopback name are refused (a web page on the internet
cannot reach this server by DNS rebinding); a strict Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import ipaddress
import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from expressiongrid.errors import UsageError
from expressiongrid.judge.app import InvalidToken, JudgeApp
from expressiongrid.judge.db import clean_judge_name
from expressiongrid.templating import render_template

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

def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _page(name: str, **context) -> bytes:
    return render_template(f"judge/{name}.html", **context).encode("utf-8")


def _cell_url(key: str) -> str:
    return "/cell/" + quote(key, safe="") + ".png"


def render_start(app: JudgeApp, default_judge: str | None, error: str | None = None) -> bytes:
    return _page("start", page_title="Judge expressions", questions=app.questions, default_judge=default_judge or "",
                 error=error)


def render_pair(app: JudgeApp, shown, done: int, total: int, question_filter: str | None) -> bytes:
    q = shown.question
    return _page("pair", page_title=f"{q.text} — judging", q=q, judge=shown.judge, done=done, total=total,
                 reference_url=_cell_url(q.reference_key) if q.reference_key else None,
                 left=shown.left, right=shown.right, left_url=_cell_url(shown.left), right_url=_cell_url(shown.right),
                 token=shown.token, question_filter=question_filter)


def render_done(judge: str, total: int) -> bytes:
    return _page("done", page_title="All pairs judged", judge=judge, total=total)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_rankings(data: dict) -> bytes:
    return _page("rankings", page_title="Rankings", data=data, cell_url=_cell_url, fmt=_fmt)


def render_error(status: int, message: str) -> bytes:
    return _page("error", page_title=str(status), status=status, message=message)


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
            self._send(status, render_error(int(status), message))

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
                judge = clean_judge_name(judge)
                shown = app.next_pair(judge, question)
            except UsageError as exc:
                return self._send(HTTPStatus.BAD_REQUEST, render_start(app, judge, str(exc)))
            done, total = app.progress(judge, question)
            if shown is None:
                return self._send(HTTPStatus.OK, render_done(judge, total))
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

