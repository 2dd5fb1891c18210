"""`expressiongrid runs list|show`: what a run folder holds (cells, status, seeds, files, timings).

Pure SQLite reads: no torch import, so both commands answer instantly.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from expressiongrid.cli._common import echo_json, terminal_safe


@click.group()
def runs() -> None:
    """Inspect run folders (the SQLite run store beside the cell images and grids)."""


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@runs.command("list", epilog="Example:\n\n  expressiongrid runs list out")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("out"),
                required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_runs(root: Path, as_json: bool) -> None:
    """List run folders under ROOT (default: out) with cell counts and the last run's status."""
    from expressiongrid.errors import StoreError
    from expressiongrid.store import Store, find_runs

    rows = []
    for run_dir in find_runs(root):
        with Store.open_read_only(run_dir) as store:
            counts = store.counts()
            history = store.runs()
            last = history[-1] if history else None
            try:
                name = store.study_info().get("name")
            except StoreError:  # a store that holds no run yet has no study: listed with "-"
                name = None
        status, running_on = _live_status(run_dir, last.status) if last else (None, None)
        rows.append({"run_dir": str(run_dir), "study": name, "cells": sum(counts.values()), **counts,
                     "last_run": last.id if last else None, "status": status,
                     **({"running_on": running_on} if running_on else {}),
                     "started": _when(last.started_at) if last else None})
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"no runs under {root}")
        return
    click.echo(f"{'folder':40} {'study':16} {'cells':>6} {'done':>6} {'failed':>6} {'pending':>7}  last run")
    for r in rows:  # user text made terminal-safe before it is padded, so the columns stay aligned
        click.echo(f"{terminal_safe(r['run_dir']):40} {terminal_safe(r['study'] or '-'):16} {r['cells']:>6} "
                   f"{r['done']:>6} {r['failed']:>6} {r['pending']:>7}  #{r['last_run']} "
                   f"{terminal_safe(_status_text(r['status'], r.get('running_on')))} {r['started']}")


def _live_status(run_dir: Path, status: str) -> tuple[str, dict | None]:
    """The last run's status as the folder's ``run.lock.json`` tells it, and (for a run still "running") who
    runs it: ``{"host", "pid", "checked"}``, ``checked`` False for a run on another machine (a shared disk),
    whose process cannot be looked at from here. A run stored as "running" whose process is gone (or whose
    pid now belongs to another process) was killed: "interrupted" (the next run records it so)."""
    from expressiongrid.run.launch import run_folder_owner

    if status != "running":
        return status, None
    owner = run_folder_owner(run_dir)
    if owner is None:
        return status, None
    if owner["alive"] is False:
        return "interrupted", None
    return status, {"host": owner["host"], "pid": owner["pid"], "checked": owner["alive"] is not None}


def _status_text(status: str, running_on: dict | None) -> str:
    """A status as printed: a run on another machine is not claimed to be running, only said to be."""
    if running_on is not None and not running_on["checked"]:
        return f"running on host {running_on['host']}? (cannot check from this machine)"
    return status


@runs.command("show", epilog="Example:\n\n  expressiongrid runs show out/demo --json")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (cells with seeds, files, timings).")
def show_run(run_dir: Path, as_json: bool) -> None:
    """Show a run folder: its study, its runs, and every cell with status, seed, file and time."""
    from expressiongrid.store import Store

    with Store.open_read_only(run_dir) as store:
        info = store.study_info()
        runs_ = store.runs()
        cells = store.cells()
        counts = store.counts()
    info = {k: v for k, v in info.items() if k != "layout"}
    running_on = None
    for r in runs_:
        if r.status == "running" and r is not runs_[-1]:
            r.status = "interrupted"  # a later run started: this one was killed before it could finish
        elif r is runs_[-1]:
            r.status, running_on = _live_status(run_dir, r.status)  # killed, and no run since
    if as_json:
        cell_rows = []
        for c in cells:
            d = c.to_dict()
            d.pop("spec", None)
            d["path"] = str(run_dir / c.file) if c.file else None
            cell_rows.append(d)
        echo_json({"run_dir": str(run_dir), "study": info, "counts": counts,
                   "runs": [{**vars(r), **({"running_on": running_on} if r is runs_[-1] and running_on else {})}
                            for r in runs_], "cells": cell_rows})
        return
    click.echo(f"run folder: {terminal_safe(run_dir)}")
    click.echo(f"study: {terminal_safe(info.get('name'))} ({terminal_safe(info.get('path') or 'ad-hoc')})")
    click.echo(f"cells: {sum(counts.values())} ({counts['done']} done, {counts['failed']} failed, "
               f"{counts['pending']} pending)")
    for r in runs_:
        s = r.summary or {}
        extra = (f": made {s.get('made', 0)}, skipped {s.get('skipped', 0)}, failed {s.get('failed', 0)} "
                 f"in {s.get('seconds', 0):.1f} s") if s else ""
        status = _status_text(r.status, running_on if r is runs_[-1] else None)
        click.echo(f"run #{r.id} {_when(r.started_at)} {terminal_safe(status)}{extra}")
    click.echo(f"{'page':>4} {'column':20} {'row':24} {'status':8} {'seed':>10} {'s':>6}  file")
    for c in cells:
        secs = f"{c.seconds:.2f}" if c.seconds is not None else "-"
        click.echo(f"{c.page:>4} {terminal_safe(c.col_label)[:20]:20} {terminal_safe(c.row_label)[:24]:24} "
                   f"{c.status:8} {c.seed:>10} {secs:>6}  {terminal_safe(c.file or c.error or '-')}")
