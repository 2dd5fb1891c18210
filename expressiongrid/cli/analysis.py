"""``expressiongrid analyze`` and ``expressiongrid report``: measure a run's cells, then publish the results."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


class _Bar:
    """tqdm bar on stderr (cells measured, cells/s, ETA), created when the first total is known."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True,
                            disable=os.environ.get("EXPRESSIONGRID_NO_PROGRESS") == "1")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command(epilog="\b\nExample:\n  expressiongrid analyze out/demo\n"
                      "  expressiongrid analyze out/study --clip-model models/clip-vit-l-14 "
                      "--aesthetic-head models/aesthetic.safetensors\n")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clip-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of a transformers CLIP model (with tokenizer and image processor) for the prompt "
                   "CLIP score. Nothing is downloaded.")
@click.option("--aesthetic-head", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Linear aesthetic head (.safetensors with 'weight' and 'bias') on the CLIP image embedding.")
def analyze(run_dir: Path, clip_model: Path | None, aesthetic_head: Path | None) -> None:
    """Measure every finished cell of RUN_DIR: face, landmarks, expression features, identity, image quality.

    Measures and scores go into the run's run.sqlite (analysis_* tables); cells measured before are
    skipped. A cell without a face is recorded as such. Needs the analysis extra:
    pip install 'expressiongrid[analysis]'.
    """
    from expressiongrid.analysis.pipeline import analyze_run

    bar = _Bar()
    try:
        summary = analyze_run(run_dir, clip_model=clip_model, aesthetic_head=aesthetic_head, progress=bar)
    finally:
        bar.close()
    click.echo(f"measured {summary.measured}, skipped {summary.skipped} (already analysed) of {summary.cells} "
               f"cells; {summary.no_face} without a face"
               + (f"; {summary.unreadable} unreadable" if summary.unreadable else "")
               + (f"; {summary.clip_scored} CLIP-scored" if summary.clip_scored else ""))
    for note in summary.notes:
        click.echo(f"note: {note}")
    click.echo(f"database: {Path(summary.run_dir) / 'run.sqlite'}")


@click.command(epilog="\b\nExample:\n  expressiongrid report out/demo\n  expressiongrid report out/demo --out site/demo\n")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.html, article.md and post/ (default: RUN_DIR/report).")
@click.option("--max-images", type=click.IntRange(0, 20), default=20, show_default=True,
              help="Images in the post bundle (civitai takes at most 20 per post).")
def report(run_dir: Path, out_dir: Path | None, max_images: int) -> None:
    """Write a self-contained HTML report, a Markdown article and a post bundle for RUN_DIR.

    Run `expressiongrid analyze RUN_DIR` first for scores; without it the report shows the grids only.
    """
    from expressiongrid.report import write_report

    files = write_report(run_dir, out_dir, max_images=max_images)
    for note in files.notes:
        click.echo(f"note: {note}")
    click.echo(f"html: {files.html}")
    click.echo(f"article: {files.markdown}")
    click.echo(f"post bundle: {len(files.bundle)} image{'' if len(files.bundle) == 1 else 's'} in {files.html.parent / 'post'}")
