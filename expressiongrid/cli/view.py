"""``expressiongrid view``: write (and optionally serve) a run's grid viewer page."""

from __future__ import annotations

from pathlib import Path

import click

from expressiongrid.cli._common import open_in_browser, serve_until_interrupted, terminal_safe


@click.command(epilog="\b\nExample:\n  expressiongrid view out/seed-study\n  expressiongrid view out/seed-study --serve")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--serve", is_flag=True, help="Also serve the page on http://127.0.0.1:PORT/ until Ctrl+C.")
@click.option("--port", type=click.IntRange(0, 65535), default=8766, show_default=True,
              help="Port for --serve (0 picks a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
def view(run_dir: Path, serve: bool, port: int, open_browser: bool) -> None:
    """Write RUN_DIR/viewer/index.html: browse the run's cells in a web page that works offline.

    Thumbnails in a table with sticky row and column labels; click a cell for the full image, its
    parameters and a copy button; zoom; choose which axis runs along rows, columns and pages; hide and
    reorder rows and columns; compare two cells side by side; analysis scores on each cell once the
    run has been analysed. Open the file in a browser, or use --serve.
    """
    from expressiongrid.report.viewer import make_viewer_server, write_viewer

    files = write_viewer(run_dir)
    click.echo(f"viewer: {files.index} ({files.cells} cells, {files.thumbnails} new thumbnails)")
    if files.unreadable:
        click.echo(f"note: {len(files.unreadable)} cell image(s) cannot be read and are shown without a picture "
                   f"({terminal_safe(files.unreadable[0])}{', ...' if len(files.unreadable) > 1 else ''}): run the "
                   "study again to remake them", err=True)
    url = files.index.resolve().as_uri()
    server = None
    if serve:
        server = make_viewer_server(run_dir, port)
        url = f"http://127.0.0.1:{server.server_address[1]}/viewer/index.html"
        click.echo(f"serving {run_dir} at {url}; press Ctrl+C to stop.")
    if open_browser:
        open_in_browser(url)
    if server is not None:
        serve_until_interrupted(server)
