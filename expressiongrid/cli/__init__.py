"""The command-line interface: the only layer that prints and exits.

Subcommands live in their own modules (``expressiongrid.cli.<area>``) and are imported only when used,
so ``expressiongrid --help`` and ``expressiongrid prompt explain`` start without importing torch.

Error policy: library code raises ``ExpressionGridError`` subclasses; here they become one line on stderr
(``error: ...``) and exit code 1 (failure) or 2 (bad usage). ``--debug`` or ``EXPRESSIONGRID_DEBUG=1``
re-raises with the traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from expressiongrid import __version__

# command name -> "module:attribute" (a click.Command or click.Group)
LAZY_COMMANDS: dict[str, str] = {
    "prompt": "expressiongrid.cli.prompt:prompt",
    "characters": "expressiongrid.cli.characters:characters",
    "expressions": "expressiongrid.cli.expressions:expressions",
    "run": "expressiongrid.cli.run:run",
    "xyz": "expressiongrid.cli.run:xyz",
    "demo": "expressiongrid.cli.run:demo",
    "init": "expressiongrid.cli.init:init",
    "import": "expressiongrid.cli.imports:import_command",
    "runs": "expressiongrid.cli.runs:runs",
    "queue": "expressiongrid.cli.queue:queue",
    "analyze": "expressiongrid.cli.analysis:analyze",
    "report": "expressiongrid.cli.analysis:report",
    "measure": "expressiongrid.cli.analysis:measure",
    "judge": "expressiongrid.cli.judge:judge",
    "view": "expressiongrid.cli.view:view",
    "config": "expressiongrid.cli.config:config",
}


def _environment_message(exc: BaseException) -> str | None:
    """A one-line message for a failure of the machine rather than of the input (disk full, permissions)."""
    import sqlite3

    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"the disk is full{where}: free some space and run the same command again to resume"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {exc.strerror}; choose a folder you can write to"
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        if "full" in text:
            return "the disk is full (run.sqlite): free some space and run the same command again to resume"
        return f"database error: {text}; the output folder's run.sqlite may be damaged or in use"
    return None


def debug_enabled(ctx: click.Context | None = None) -> bool:
    if os.environ.get("EXPRESSIONGRID_DEBUG", "") not in ("", "0"):
        return True
    while ctx is not None:
        if ctx.obj and isinstance(ctx.obj, dict) and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        names = set(super().list_commands(ctx)) | set(self.lazy_commands)
        return sorted(names)

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith("expressiongrid.cli"):
                    return None  # area not built yet: behave as an unknown command
                raise
            return getattr(module, attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx):
        from expressiongrid.cli._common import terminal_safe
        from expressiongrid.errors import ExpressionGridError

        try:
            return super().invoke(ctx)
        except ExpressionGridError as exc:
            if debug_enabled(ctx):
                raise
            message = str(exc).strip() or exc.__class__.__name__
            click.echo(f"error: {terminal_safe(message)}", err=True)
            for problem in getattr(exc, "problems", []) or []:
                click.echo(f"  - {terminal_safe(problem)}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            if debug_enabled(ctx):
                raise
            # The reader of the output went away (`... | head`): stop quietly, as other command-line tools
            # do, instead of an "error: Broken pipe" line; stdout goes to devnull so the exit flush is silent.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(1)
        except Exception as exc:
            message = None if debug_enabled(ctx) else _environment_message(exc)
            if message is None:
                raise
            click.echo(f"error: {terminal_safe(message)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if debug_enabled(ctx):
                raise
            click.echo("interrupted: finished cells are kept; run the same command again to resume", err=True)
            ctx.exit(130)


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example:\n\n  expressiongrid demo --out out/demo",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="expressiongrid")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """A1111-style expression x character grids for SD1.5 character models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not debug_enabled(ctx):
        # Library chatter (optional torchvision, deprecations) is not the user's business; our own warnings
        # and errors still show. Set before transformers/diffusers are imported, which read these once.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
