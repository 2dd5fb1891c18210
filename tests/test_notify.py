"""--notify: a JSON summary posted to a real local HTTP server; failures are logged, never raised."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from expressiongrid.errors import UsageError
from expressiongrid.run.notify import check_url, notify, safe_url
from expressiongrid.run.runlog import open_run_log


class _Server:
    """A local http.server that records each POST and answers with `status` after `delay` seconds."""

    def __init__(self, status=200, delay=0.0):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the timeout test's client hangs up before the slow answer: expected, not news

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


SUMMARY = {
    "event": "run_finished", "study": "night1", "status": "incomplete", "exit_code": 1,
    "cells_total": 12, "cells_done": 10, "cells_failed": 2,
    "failures": [{"column": "broken_lora", "error": "corrupt safetensors file"}],
    "out_dir": "/runs/night1", "grids": ["grids/grid.png"], "seconds": 42.5,
}


def test_posts_the_summary_as_json(tmp_path):
    with _Server() as server:
        with open_run_log(tmp_path):
            assert notify(server.url + "/hook", SUMMARY, timeout=5) is True
    (request,) = server.requests
    assert request["path"] == "/hook"
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert json.loads(request["body"]) == SUMMARY
    assert "notification sent" in (tmp_path / "run.log").read_text()


def test_never_sends_api_keys_nor_unknown_fields(monkeypatch):
    secret = "civitai_0123456789abcdef"
    monkeypatch.setenv("CIVITAI_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    summary = dict(SUMMARY)
    summary["failures"] = [{"column": "x", "error": f"download failed: https://civitai.com/api?token={secret}"}]
    summary["api_key"] = secret  # not an allowed field: must not travel
    summary["env"] = {"HF_TOKEN": "hf_abcdefghijklmnop"}
    with _Server() as server:
        assert notify(server.url, summary, timeout=5)
    body = server.requests[0]["body"].decode()
    assert secret not in body and "hf_abcdefghijklmnop" not in body
    payload = json.loads(body)
    assert "api_key" not in payload and "env" not in payload
    assert "[redacted]" in payload["failures"][0]["error"]


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_is_logged_and_returns_false(tmp_path, status):
    with _Server(status=status) as server:
        with open_run_log(tmp_path) as log:
            assert notify(server.url + "/hook?token=s3cr3t-webhook", SUMMARY, timeout=5) is False
    text = (tmp_path / "run.log").read_text()
    assert f"HTTP {status}" in text and "ERROR" in text
    assert "s3cr3t-webhook" not in text  # webhook tokens in the query string stay out of the log
    assert log.failures_seen == 1


def test_unreachable_server_is_logged_not_raised(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open_run_log(tmp_path):
        assert notify(f"http://127.0.0.1:{port}/x", SUMMARY, timeout=2) is False
    assert "notification to http://127.0.0.1" in (tmp_path / "run.log").read_text()


def test_slow_server_times_out(tmp_path):
    with _Server(delay=3) as server:
        with open_run_log(tmp_path):
            assert notify(server.url, SUMMARY, timeout=0.5) is False
    assert "timed out" in (tmp_path / "run.log").read_text()


def test_only_http_urls_are_accepted(caplog):
    for bad in ("file:///etc/passwd", "ftp://example.com/x", "example.com/hook", "http://"):
        with pytest.raises(UsageError):
            check_url(bad)
    with caplog.at_level(logging.ERROR, logger="expressiongrid"):
        assert notify("file:///etc/passwd", SUMMARY) is False
    assert check_url("https://ntfy.sh/topic") == "https://ntfy.sh/topic"
    assert safe_url("https://user:pw@hooks.example.com:8443/a/b?token=x") == "https://hooks.example.com:8443/a/b"


_STUDY = """
name = "crashy"
[sampling]
steps = 2
width = 64
height = 64
seed = 1
[prompt]
positive = "a photo of a woman, {expression}"
[rows]
axis = "expressions"
values = ["neutral", "smiling"]
[columns]
axis = "CFG Scale"
values = "5,7"
"""


def test_a_run_that_dies_still_notifies_and_logs_why(tmp_path, monkeypatch):
    import expressiongrid.run.runner as runner
    from expressiongrid.run.launch import run_launched
    from expressiongrid.study.study import load_study

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(runner, "run_study", crash)
    (tmp_path / "crashy.toml").write_text(_STUDY)
    study = load_study(tmp_path / "crashy.toml")
    with _Server() as server:
        with pytest.raises(RuntimeError):
            run_launched(study, tmp_path / "out", notify_url=server.url)
    body = json.loads(server.requests[0]["body"])
    assert body["status"] == "failed" and body["exit_code"] == 1 and body["study"] == "crashy"
    assert "illegal memory access" in body["message"]
    log = (tmp_path / "out" / "run.log").read_text()
    assert "run stopped by RuntimeError: CUDA error" in log and "notification sent" in log


class _Recorder(_Server):
    """A _Server that also checks HTTP basic auth: 401 without the right Authorization header."""

    def __init__(self, user: str, password: str):
        import base64

        super().__init__(status=200)
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        handler = self.httpd.RequestHandlerClass
        original = handler.do_POST

        def do_POST(self):  # noqa: N802
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            original(self)

        handler.do_POST = do_POST


def test_basic_auth_webhook_gets_its_credentials_as_a_header(tmp_path):
    with _Recorder("night", "p@ss:w0rd") as server:
        url = server.url.replace("http://", "http://night:p%40ss%3Aw0rd@") + "/hook?token=abc"
        with open_run_log(tmp_path):
            assert notify(url, SUMMARY, timeout=5) is True
    assert server.requests[0]["path"] == "/hook?token=abc"
    log = (tmp_path / "run.log").read_text()
    assert "w0rd" not in log and "token=abc" not in log and "night:" not in log


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/", "http://127.0.0.1:0/", "http://127.0.0.1:abc/",
                                 "http://user:pw@:80/"])
def test_a_url_with_a_bad_port_or_no_host_is_a_usage_error_and_never_raises_later(tmp_path, url):
    with pytest.raises(UsageError) as exc:
        check_url(url)
    assert "pw" not in str(exc.value)
    with open_run_log(tmp_path):
        assert notify(url, SUMMARY, timeout=2) is False
    assert "pw" not in (tmp_path / "run.log").read_text()


def test_redact_argv_hides_the_notify_token_and_password():
    from expressiongrid.run.notify import redact_argv

    argv = ["run", "s.toml", "--notify", "https://u:secretpw@hooks.example.com/x?token=T0K", "--out", "o"]
    assert redact_argv(argv) == ["run", "s.toml", "--notify", "https://hooks.example.com/x", "--out", "o"]
    assert redact_argv(["--notify=https://h.example/x?k=1"]) == ["--notify=https://h.example/x"]


def test_run_log_and_runs_argv_never_hold_the_notify_secret(tmp_path):
    import sqlite3

    from expressiongrid.run.launch import run_launched
    from expressiongrid.study.study import load_study

    (tmp_path / "s.toml").write_text(_STUDY.replace('values = "5,7"', 'values = "7"').replace(
        'values = ["neutral", "smiling"]', 'values = ["neutral"]'))
    study = load_study(tmp_path / "s.toml")
    out = tmp_path / "out"
    with _Recorder("me", "hunter22") as server:
        url = server.url.replace("http://", "http://me:hunter22@") + "/h?token=SECRET-T0KEN"
        outcome = run_launched(study, out, argv=["run", "s.toml", "--notify", url], notify_url=url)
    assert outcome.exit_code == 0
    assert json.loads(server.requests[0]["body"])["status"] == "done"  # the basic-auth webhook fired
    log = (out / "run.log").read_text()
    with sqlite3.connect(out / "run.sqlite") as db:
        stored = " ".join(row[0] for row in db.execute("SELECT argv FROM runs"))
    for text in (log, stored):
        assert "SECRET-T0KEN" not in text and "hunter22" not in text
    assert server.url + "/h" in stored and server.url + "/h" in log


def test_run_says_on_stderr_when_its_notification_failed_and_keeps_its_exit_code(tmp_path):
    from click.testing import CliRunner

    from expressiongrid.cli import main

    (tmp_path / "s.toml").write_text(_STUDY.replace('values = "5,7"', 'values = "7"').replace(
        'values = ["neutral", "smiling"]', 'values = ["neutral"]'))
    args = ["run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")]
    with _Server(status=500) as server:
        url = server.url + "/hook?token=s3cr3t-webhook"
        result = CliRunner().invoke(main, [*args, "--notify", url], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0, result.output  # every cell was made
    assert f"warning: the --notify post to {server.url}/hook failed (run.log says why)" in result.stderr
    assert "s3cr3t-webhook" not in result.output
    with _Server(status=200) as server:
        result = CliRunner().invoke(main, [*args, "--notify", server.url], env={"EXPRESSIONGRID_NO_PROGRESS": "1"})
    assert result.exit_code == 0 and "--notify" not in result.stderr and len(server.requests) == 1
