"""`expressiongrid import SOURCE --out STUDY.toml`: a study from an A1111 image's parameters."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("import", epilog="\b\nExample:\n  expressiongrid import 00012-1234.png --out remake.toml\n"
                                "  expressiongrid import xyz_grid-0001.png --out grid.toml   # axes too\n"
                                "  expressiongrid run remake.toml --dry-run")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The study file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def import_command(source: Path, out: Path, force: bool) -> None:
    """Write a study that remakes SOURCE: an image with A1111 parameters (PNG Info, JPEG/WebP EXIF) or a text
    file of them. An X/Y/Z plot grid's axes become the study's columns, rows and pages; models, LoRAs and
    embeddings are looked up in the configured folders. Whatever cannot be carried over is listed."""
    from expressiongrid.cli._common import shell_word, terminal_safe
    from expressiongrid.errors import UsageError
    from expressiongrid.study.importer import import_source

    if out.exists() and not force:
        raise UsageError(f"{out} exists; choose another --out or pass --force")
    result = import_source(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.toml, encoding="utf-8")
    click.echo(f"wrote {terminal_safe(out)}")
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.unresolved:
        click.echo(f"not carried over ({len(result.unresolved)}; also listed at the top of {out}):", err=True)
        for item in result.unresolved:
            click.echo(f"  - {item}", err=True)
    click.echo(f"next: expressiongrid run {shell_word(out)} --dry-run")
