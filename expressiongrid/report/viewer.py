"""The grid viewer: ``RUN_DIR/viewer/index.html``, one offline page to browse a run cell by cell.

In the spirit of Infinity Grid's web page: every cell as a thumbnail in a table with sticky row and column
labels; a click shows the cell at full size with its parameters and a button that copies the A1111 text;
zoom; any axis (expressions, characters, the page axis) along rows, columns or pages; columns (and rows)
hidden or moved; two cells side by side; and the analysis scores on each cell when the run was analysed.

The page is a Jinja2 template (autoescaped) whose script builds the table from JSON data with
``textContent`` only, so labels and prompts are never markup. Thumbnails (``viewer/thumbs/``) are made once
per cell image and loaded lazily; full images are the run's own cell files (``../cells/...``), so the
page works from the folder, offline, and from ``expressiongrid view --serve``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from expressiongrid.output.infotext import axis_type_name
from expressiongrid.templating import render_template

VIEWER_DIR = "viewer"
THUMB_SIDE = 256


@dataclass
class ViewerFiles:
    index: Path
    thumbnails: int  # thumbnails made now (the others were up to date)
    cells: int
    unreadable: list[str] = field(default_factory=list)  # done cells whose image cannot be read (shown without)


def _thumbnail(run_dir: Path, file: str, out_dir: Path, key: str) -> tuple[str | None, bool]:
    """The thumbnail of a cell image (made when missing or older than the image); (path, made now).

    The path is None when the image cannot be read (damaged on disk): the caller says so."""
    from PIL import Image, UnidentifiedImageError

    from expressiongrid.output.images import atomic_write

    src = run_dir / file
    name = f"thumbs/{key}.jpg"
    dest = out_dir / name
    if dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime:
        return name, False
    try:
        with Image.open(src) as im:
            image = im.convert("RGB")
    except (UnidentifiedImageError, OSError):
        return None, False
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.LANCZOS)
    atomic_write(dest, lambda fh: image.save(fh, format="JPEG", quality=85))
    return name, True


def _scores(cell) -> list[list[str]] | None:
    if not cell.measured:
        return None

    def fmt(v):
        return "–" if v is None else f"{v:.2f}"

    scores = [["face", "yes" if cell.face_found else "no"], ["fidelity", fmt(cell.fidelity)],
              ["identity distance", fmt(cell.identity_to_neutral)]]
    if cell.identity_flag:
        scores.append(["identity flag", cell.identity_flag])
    if cell.aus:
        top = sorted(((v, k) for k, v in cell.aus.items() if v and v > 0), reverse=True)[:3]
        if top:
            scores.append(["AUs", ", ".join(f"{k} {v:.2f}" for v, k in top)])
    return scores


def viewer_data(store) -> tuple[dict, int, list[str]]:
    """Everything the page shows, as JSON-ready data, how many thumbnails were made, and the done cells whose
    image could not be read (shown without a picture)."""
    from expressiongrid.report.data import load_report_data, stored_axis_kind

    run_dir = Path(store.run_dir)
    info = store.study_info()
    data = load_report_data(store)
    out_dir = run_dir / VIEWER_DIR
    page_values = info["pages"]["values"] if isinstance(info.get("pages"), dict) else []

    def axis(key: str, fallback: str, values) -> dict:
        kind = stored_axis_kind(info, key)
        name = (axis_type_name(kind) if kind else None) or fallback
        return {"name": name, "values": [{"id": str(i), "label": str(label)} for i, label in values]}

    axes = [axis("rows", "Rows", data.rows), axis("columns", "Columns", data.columns),
            axis("pages", "Page", [(v.get("id", i), v.get("label", "")) for i, v in enumerate(page_values)]
                 or [("0", "")])]
    if not page_values:
        axes[2]["name"] = "(none)"
    row_pos = {rid: i for i, (rid, _) in enumerate(data.rows)}
    col_pos = {cid: i for i, (cid, _) in enumerate(data.columns)}
    cells: dict[tuple[int, int, int], dict] = {}
    made = 0
    unreadable: list[str] = []
    for cell in data.cells:
        if cell.row_id not in row_pos or cell.col_id not in col_pos:
            continue
        at = (row_pos[cell.row_id], col_pos[cell.col_id], cell.page)
        entry = cells.setdefault(at, {"at": list(at), "samples": []})
        sample = {"key": cell.key, "status": cell.status, "seed": cell.seed, "error": cell.error,
                  "parameters": cell.parameters or "", "title": cell.title()}
        if cell.status == "done" and cell.file and (run_dir / cell.file).is_file():
            thumb, new = _thumbnail(run_dir, cell.file, out_dir, cell.key)
            if thumb is None:
                unreadable.append(cell.file)
            else:
                sample["thumb"] = thumb
                sample["full"] = os.path.relpath(run_dir / cell.file, out_dir).replace(os.sep, "/")
            made += new
        scores = _scores(cell)
        if scores:
            sample["scores"] = scores
            sample["fidelity"] = cell.fidelity
        entry["samples"].append(sample)
    payload = {
        "title": data.title,
        "axes": axes,
        "cells": sorted(cells.values(), key=lambda c: c["at"]),
        "analysed": data.analysed,
        "thumb_side": THUMB_SIDE,
        "cell_size": [info.get("sampling", {}).get("width", 512), info.get("sampling", {}).get("height", 512)],
    }
    return payload, made, unreadable


def write_viewer(run_dir: str | os.PathLike) -> ViewerFiles:
    """Write ``RUN_DIR/viewer/index.html`` (and its thumbnails) for the run in `run_dir`."""
    from expressiongrid.errors import UsageError
    from expressiongrid.output.images import atomic_write
    from expressiongrid.paths import unwritable
    from expressiongrid.store import Store

    run_dir = Path(run_dir)
    with Store.open_read_only(run_dir) as store:
        why = unwritable(run_dir)
        if why:
            raise UsageError(f"the run folder {run_dir} {why}, and the viewer is written into it (viewer/): copy "
                             "the folder to a disk you can write to (`expressiongrid runs show` reads it where it is)")
        payload, made, unreadable = viewer_data(store)
    html = render_template("viewer/index.html", title=payload["title"], data=payload)
    index = atomic_write(run_dir / VIEWER_DIR / "index.html", lambda fh: fh.write(html.encode("utf-8")))
    return ViewerFiles(index=index, thumbnails=made, cells=len(payload["cells"]), unreadable=unreadable)


SERVED_DIRS = (VIEWER_DIR, "cells", "grids")  # what --serve hands out; the database and logs stay private


def make_viewer_server(run_dir: str | os.PathLike, port: int = 0):
    """An HTTP server on 127.0.0.1 for the run's viewer (``/`` redirects to ``/viewer/index.html``).

    Only files under ``viewer/``, ``cells/`` and ``grids/`` that resolve inside the run folder are served,
    and requests whose Host is not a loopback name are refused (no DNS rebinding from a web page).
    """
    from functools import partial
    from http import HTTPStatus
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote, urlsplit

    from expressiongrid.errors import UsageError
    from expressiongrid.judge.server import LOOPBACK_NAMES, is_loopback

    root = Path(run_dir).resolve()

    class Handler(SimpleHTTPRequestHandler):
        server_version = "expressiongrid-viewer"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - stdlib signature
            pass

        def end_headers(self):
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache")
            super().end_headers()

        def _allowed(self) -> bool:
            host = (self.headers.get("Host") or "").strip()
            name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
            if name not in LOOPBACK_NAMES and not is_loopback(name):
                self.send_error(HTTPStatus.BAD_REQUEST, "unexpected Host header")
                return False
            path = unquote(urlsplit(self.path).path)
            if path in ("", "/"):
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", f"/{VIEWER_DIR}/index.html")
                self.end_headers()
                return False
            parts = [p for p in path.split("/") if p]
            target = (root / Path(*parts)).resolve() if parts else root
            # Judged on the resolved path: "cells/../run.sqlite" or a planted symlink leads elsewhere.
            inside = target.is_relative_to(root) and target != root
            if ".." in parts or not inside or target.relative_to(root).parts[0] not in SERVED_DIRS \
                    or not target.is_file():
                self.send_error(HTTPStatus.NOT_FOUND, "not found")
                return False
            return True

        def do_GET(self):
            if self._allowed():
                super().do_GET()

        def do_HEAD(self):
            if self._allowed():
                super().do_HEAD()

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=str(root)))
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc} "
                         "(pass another --port, or --port 0 for any free port)") from exc
    server.daemon_threads = True
    return server
