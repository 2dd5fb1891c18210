"""``--notify URL``: post a JSON summary when a run ends (a phone push service, a chat webhook, a script).

The summary says what a person wants to know before getting out of bed: which study, whether it finished,
how many cells are done or failed and why, how long it took and where the grids are. Posting never
breaks a run: every failure (bad host, timeout, HTTP error) is logged to the run log and returned as
False. Secrets stay home: the payload is built from an allow-list of summary fields, any value of an
environment variable that looks like a credential (``*_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``)
is blanked out of it, and the URL is logged without its query string or user:password part.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from expressiongrid.errors import UsageError

logger = logging.getLogger("expressiongrid.run.notify")

DEFAULT_TIMEOUT = 10.0
# Fields a notification may carry; anything else in a summary stays out.
SUMMARY_FIELDS = (
    "event", "study", "status", "exit_code", "out_dir", "grids", "cells_total", "cells_done", "cells_failed",
    "cells_pending", "failures", "started_at", "finished_at", "seconds", "host", "process_count", "message",
)
_SECRET_NAME = re.compile(r"(_KEY$|^KEY$|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
REDACTED = "[redacted]"


def check_url(url: str) -> str:
    """Return `url` if it can be notified (http or https with a host); `UsageError` otherwise.

    Only http(s): urllib would happily "post" to file:// or ftp:// URLs, which is never what a user meant.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--notify needs an http:// or https:// URL with a host, got {safe_url(url)!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--notify URL {safe_url(url)!r} has a port outside 1-65535: give a real port or none")
    return url


def safe_url(url: str) -> str:
    """The URL as it may appear in logs: no user:password, no query string or fragment (webhook tokens live there).

    Never raises: a URL too broken to parse is shown as its scheme and host part only.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as it may be logged or stored: the ``--notify`` URL shown by :func:`safe_url`."""
    out: list[str] = []
    after_flag = False
    for arg in argv:
        if after_flag:
            out.append(safe_url(arg))
        elif arg.startswith("--notify="):
            out.append("--notify=" + safe_url(arg[len("--notify="):]))
        else:
            out.append(arg)
        after_flag = arg == "--notify"
    return out


def _request_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL urllib can open (no ``user:password@``) and the headers that carry those credentials.

    urllib does not read credentials from the URL itself (it takes ``user:pw@host`` for a host with a
    bad port), so a basic-auth webhook is sent its credentials as an ``Authorization`` header.
    """
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, {}
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode("utf-8")
    headers = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), headers


def _secret_values(environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    # Short values ("1", "true") would blank out ordinary words; real credentials are long.
    return sorted({v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}, key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every occurrence of each secret replaced, through dicts, lists and strings."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    return value


def build_payload(summary: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON body: the allow-listed fields of `summary`, with credential values blanked out."""
    payload = {k: summary[k] for k in SUMMARY_FIELDS if k in summary}
    return redact(payload, _secret_values(environ))


def notify(url: str, summary: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> bool:
    """POST the summary as JSON to `url`; True on a 2xx answer. Never raises: failures are logged."""
    shown = safe_url(url)
    try:
        check_url(url)
        target, auth = _request_target(url)
        body = json.dumps(build_payload(summary), ensure_ascii=False, default=str).encode("utf-8")
        request = urllib.request.Request(
            target, data=body, method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "expressiongrid-notify",
                     **auth},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        logger.error("notification to %s failed: the server answered HTTP %s %s", shown, exc.code, exc.reason)
        return False
    except Exception as exc:  # DNS, refused, timeout, TLS, bad URL: the run's results matter more
        reason = getattr(exc, "reason", None) or exc
        logger.error("notification to %s failed: %s", shown, redact(str(reason), _secret_values()))
        return False
    logger.info("notification sent to %s (HTTP %s)", shown, status)
    return True
