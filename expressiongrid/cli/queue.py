"""`expressiongrid queue`: studies to run overnight, one after another, resumable after a crash or reboot."""

from __future__ import annotations

import time
from pathlib import Path

import click

from expressiongrid.cli._common import echo_json, terminal_safe


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _notify_url(ctx, param, value):
    if value is None:
        return None
    from expressiongrid.run.notify import check_url
    from expressiongrid.errors import UsageError

    try:
        return check_url(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def queue() -> None:
    """A persistent queue of studies for overnight runs.

    The queue lives in the user data folder (set EXPRESSIONGRID_HOME to move it). `queue run` works
    through it and, after a crash or reboot, resumes the interrupted study first; finished cells are kept.
    """


@queue.command("add")
@click.argument("studies", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Output folder. With several studies each gets OUT/<study name>.")
@click.option("--notify", "notify_url", callback=_notify_url, metavar="URL",
              help="POST a JSON summary to URL when each study ends.")
def add(studies: tuple[str, ...], out: str | None, notify_url: str | None) -> None:
    """Add one or more study files to the end of the queue.

    Example:

      expressiongrid queue add studies/night1.toml studies/night2.toml --out runs
    """
    from expressiongrid.cli.run import _default_out
    from expressiongrid.errors import UsageError
    from expressiongrid.run.queue import StudyQueue
    from expressiongrid.study.study import load_study

    extra = ["--notify", notify_url] if notify_url else []
    # Every study is validated before any is queued (a typo is reported now, while the user is at the
    # keyboard, and nothing is queued), and its output folder fixed now, because `queue run` may be started
    # from another directory.
    planned: list[tuple[str, Path]] = []
    for study in studies:
        loaded = load_study(study)
        if out is not None:
            out_dir = Path(out) / Path(study).stem if len(studies) > 1 else Path(out)
        else:
            out_dir = _default_out(loaded, None)
        planned.append((study, out_dir))
    folders: dict[Path, str] = {}
    for study, out_dir in planned:
        other = folders.setdefault(Path(out_dir).resolve(), study)
        if other != study:
            raise UsageError(f"{other} and {study} would both run into {out_dir}; queue them with separate "
                             "--out folders (or rename one)")
    q = StudyQueue()
    for study, out_dir in planned:
        entry = q.add(study, out_dir=out_dir, args=extra)
        click.echo(f"queued #{entry.id}: {terminal_safe(entry.study)}"
                   + (f" -> {terminal_safe(entry.out_dir)}" if entry.out_dir else ""))


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_(as_json: bool) -> None:
    """Show every queued, running and finished study with its state and outcome.

    Example:

      expressiongrid queue list
    """
    from expressiongrid.run.notify import redact_argv
    from expressiongrid.run.queue import StudyQueue

    q = StudyQueue()
    entries = q.entries()
    runner_active = q.runner_active() if any(e.state == "running" for e in entries) else False
    if as_json:
        # The queue keeps the full --notify URL to post to it later; what is printed (and so pasted into
        # bug reports or logs) shows it without its user:password, query and fragment, like run.log.
        echo_json([e.__dict__ | {"args": redact_argv(list(e.args or [])),
                                 "interrupted": e.state == "running" and not runner_active} for e in entries])
        return
    if not entries:
        click.echo(f"the queue is empty ({q.path})")
        return
    for e in entries:
        state = e.state
        if state == "running" and not runner_active:
            state = "running (interrupted; `queue run` resumes it)"
        click.echo(f"#{e.id:<4} {state:<10} added {_fmt_time(e.added_at)}  {terminal_safe(e.study)}")
        if e.out_dir:
            click.echo(f"      out: {terminal_safe(e.out_dir)}")
        if e.started_at:
            click.echo(f"      started {_fmt_time(e.started_at)}, finished {_fmt_time(e.finished_at)}, "
                       f"attempts {e.attempts}")
        if e.outcome:
            click.echo(f"      outcome: {terminal_safe(e.outcome)}")


@queue.command("run")
@click.option("--max", "max_entries", type=click.IntRange(min=1), default=None,
              help="Stop after this many studies (default: until the queue is empty).")
def run(max_entries: int | None) -> None:
    """Work through the queue, resuming the first unfinished study.

    Exit code 0 if every study finished completely, 1 if any was incomplete or failed.

    Example:

      nohup expressiongrid queue run > queue.out 2>&1 &
    """
    from expressiongrid.run.queue import StudyQueue, execute_entry, run_queue

    q = StudyQueue()

    def execute(entry):
        # The study's own output (plan, a progress line a minute, failures, grid paths) goes to this
        # command's stderr, so a `nohup ... > queue.out` log tells the whole night.
        return execute_entry(entry, echo=lambda line: click.echo(f"   {terminal_safe(line)}", err=True))

    def on_start(entry):
        again = " (resuming)" if entry.attempts > 1 else ""
        click.echo(f"== #{entry.id} {terminal_safe(entry.study)}{again}", err=True)

    def on_finish(result):
        click.echo(f"== #{result.entry.id} {result.state}: {terminal_safe(result.outcome)}", err=True)

    results = run_queue(q, execute=execute, on_start=on_start, on_finish=on_finish, max_entries=max_entries)
    if not results:
        click.echo("nothing to run: every study in the queue is finished", err=True)
        return
    bad = [r for r in results if r.state != "done"]
    click.echo(f"queue: {len(results) - len(bad)} done, {len(bad)} incomplete or failed", err=True)
    if bad:
        click.get_current_context().exit(1)


@queue.command("remove")
@click.argument("ids", nargs=-1, required=True, type=int)
def remove(ids: tuple[int, ...]) -> None:
    """Remove entries by id (their output folders are kept).

    Example:

      expressiongrid queue remove 3
    """
    from expressiongrid.run.queue import StudyQueue

    q = StudyQueue()
    for entry_id in ids:
        entry = q.remove(entry_id)
        click.echo(f"removed #{entry.id}: {terminal_safe(entry.study)}")


@queue.command("retry")
@click.argument("ids", nargs=-1, required=True, type=int)
def retry(ids: tuple[int, ...]) -> None:
    """Put finished entries back in the queue (after fixing a broken file); done cells are not redone.

    Example:

      expressiongrid queue retry 2
    """
    from expressiongrid.run.queue import StudyQueue

    q = StudyQueue()
    for entry_id in ids:
        entry = q.requeue(entry_id)
        click.echo(f"queued again #{entry.id}: {terminal_safe(entry.study)}")
