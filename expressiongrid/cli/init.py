"""`expressiongrid init DIR`: the example study and character templates, for an installed copy."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(epilog="\b\nExample:\n  expressiongrid init my-study\n"
                      "  expressiongrid run my-study/examples/seed-study.toml --dry-run")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite template files that are already there.")
def init(directory: Path, force: bool) -> None:
    """Write the example study (examples/seed-study.toml) and character templates (characters/) into DIRECTORY."""
    from expressiongrid.cli._common import shell_word, terminal_safe
    from expressiongrid.data import write_templates

    for path in write_templates(directory, force=force):
        click.echo(f"wrote {terminal_safe(path)}")
    study = directory / "examples" / "seed-study.toml"
    click.echo(f"next: put your checkpoint in [model] source of {terminal_safe(study)} (a path, or its name once "
               "`expressiongrid config show` lists your A1111 folders),")
    click.echo(f"      copy a characters/example-*.toml into {terminal_safe(directory / 'characters' / 'mine')} "
               "per character, then")
    click.echo(f"      expressiongrid run {shell_word(study)} --dry-run")
