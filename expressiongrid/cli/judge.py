"""``expressiongrid judge``: judge a run's cells in pairs in the browser; answers become rankings."""

from __future__ import annotations

from pathlib import Path

import click

from expressiongrid.cli._common import echo_json, open_in_browser, serve_until_interrupted


@click.command(
    epilog="\b\nExample:\n  expressiongrid judge out/demo --judge ann\n"
    "  expressiongrid judge out/demo --rankings > rankings.json",
)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets other machines judge "
                   "(and see the run's images): only on a network you trust.")
@click.option("--judge", "judge_name", metavar="NAME", help="Name filled in on the start page.")
@click.option("--kind", "kinds", type=click.Choice(["expression", "identity"]), multiple=True,
              help="Ask only this kind of question (repeatable). Default: both.")
@click.option("--allow-repeats", is_flag=True,
              help="Once a judge has seen every pair, ask pairs again (to measure self-consistency).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@click.option("--rankings", "print_rankings", is_flag=True,
              help="Print the current rankings (JSON) and exit instead of serving.")
def judge(run_dir: Path, port: int, host: str, judge_name: str | None, kinds: tuple[str, ...],
          allow_repeats: bool, open_browser: bool, print_rankings: bool) -> None:
    """Judge RUN_DIR's cells in pairs in a local web page.

    Shows two cells side by side with a question built from the study ("Which face shows smiling
    better?", "Which looks more like the same person as this reference?"); answer with the arrow keys
    (or 1/2), = or e for equal, s to skip. Answers go into the run's run.sqlite with your name and the
    time; pairs are chosen where the current ranking is least sure, and never twice for one judge.
    Rankings (Bradley–Terry, with 95 % intervals) are on the page under /rankings.
    """
    from expressiongrid.judge.app import JudgeApp
    from expressiongrid.judge.rankings import rankings_for_store
    from expressiongrid.judge.server import is_loopback, make_server
    from expressiongrid.store import Store

    store = Store.open_existing(run_dir)
    try:
        if print_rankings:
            echo_json(rankings_for_store(store))
            return
        app = JudgeApp(store, allow_repeats=allow_repeats, kinds=kinds or ("expression", "identity"))
        if not is_loopback(host):
            click.echo(
                f"warning: listening on {host}, not only on this machine: anyone who can reach it can judge "
                "and see this run's images. Use --host 127.0.0.1 unless you mean that.",
                err=True,
            )
        server = make_server(app, host, port, default_judge=judge_name)
        bound_host, bound_port = server.server_address[:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown_host}:{bound_port}/"
        n_pairs = sum(len(q.items) * (len(q.items) - 1) // 2 for q in app.questions)
        click.echo(f"Judging {run_dir} at {url} ({len(app.questions)} questions, {n_pairs} pairs); "
                   "press Ctrl+C to stop.")
        if open_browser:
            open_in_browser(url)
        serve_until_interrupted(server)
        from expressiongrid.judge.db import load_judgements

        click.echo(f"stopped; {len(load_judgements(store.connection))} answers stored in {store.db_path}")
    finally:
        store.close()
