"""``expressiongrid analyze`` and ``expressiongrid report``: measure a run's cells, then publish the results."""

from __future__ import annotations

from pathlib import Path

import click

from expressiongrid.cli._common import ProgressBar, terminal_safe


@click.command(epilog="\b\nExample:\n  expressiongrid analyze out/demo\n"
                      "  expressiongrid analyze ~/a1111/outputs/txt2img-images/2024-05-01   # a folder of A1111 images\n"
                      "  expressiongrid analyze xyz_grid-0001.png                           # an A1111 X/Y/Z grid\n"
                      "  expressiongrid analyze out/study --clip-model models/clip-vit-l-14 "
                      "--aesthetic-head models/aesthetic.safetensors\n")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="For a folder of images or a grid image: the run folder to make of them (default: "
                   "SOURCE/expressiongrid-run for a folder, GRID-run next to a grid image).")
@click.option("--clip-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of a transformers CLIP model (with tokenizer and image processor) for the prompt "
                   "CLIP score. Nothing is downloaded.")
@click.option("--aesthetic-head", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Linear aesthetic head (.safetensors with 'weight' and 'bias') on the CLIP image embedding.")
def analyze(source: Path, out_dir: Path | None, clip_model: Path | None, aesthetic_head: Path | None) -> None:
    """Measure every finished cell of a run: face, landmarks, expression features, identity, image quality.

    SOURCE is a run folder, a folder of A1111 images (rows and columns read from their parameters: LoRA
    tags make the columns, the words that differ between prompts the rows), or an A1111 X/Y/Z grid image
    (cut into cells by its layout). Measures and scores go into the run's run.sqlite (analysis_* tables);
    cells measured before are skipped. A cell without a face is recorded as such. Needs the analysis extra:
    pip install 'expressiongrid[analysis]'.
    """
    from expressiongrid.analysis import faces
    from expressiongrid.analysis.imported import run_from_folder, run_from_grid
    from expressiongrid.analysis.pipeline import analyze_run

    faces.check_available()  # the install hint comes first, before any folder or grid is read
    run_dir = source
    if source.is_file():
        run_dir = run_from_grid(source, out_dir or source.with_name(f"{source.stem}-run"))
        click.echo(f"grid cut into cells: {run_dir}")
    elif source.is_dir() and not (source / "run.sqlite").exists():
        run_dir = run_from_folder(source, out_dir or source / "expressiongrid-run")
        click.echo(f"images gathered into a run: {run_dir}")
    elif out_dir is not None:
        raise click.UsageError("--out is for a folder of images or a grid image; SOURCE is already a run")
    bar = ProgressBar("cell")
    try:
        summary = analyze_run(run_dir, clip_model=clip_model, aesthetic_head=aesthetic_head, progress=bar)
    finally:
        bar.close()
    click.echo(f"measured {summary.measured}, skipped {summary.skipped} (already analysed) of {summary.cells} "
               f"cells; {summary.no_face} without a face"
               + (f"; {summary.unreadable} unreadable" if summary.unreadable else "")
               + (f"; {summary.clip_scored} CLIP-scored" if summary.clip_scored else ""))
    for note in summary.notes:
        click.echo(terminal_safe(f"note: {note}"))
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
        click.echo(terminal_safe(f"note: {note}"))
    click.echo(f"html: {files.html}")
    click.echo(f"article: {files.markdown}")
    click.echo(f"post bundle: {len(files.bundle)} image{'' if len(files.bundle) == 1 else 's'} in {files.html.parent / 'post'}")


@click.command(epilog="\b\nExample:\n  expressiongrid measure smile.png frown.png --neutral rest.png\n"
                      "  expressiongrid measure outputs/*.png --json > measures.jsonl\n")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--neutral", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A photo of the same face at rest: AUs are read against it, and the identity distance to it "
                   "is given. Without it AUs are read against the generic neutral face of the tuning photos.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image per line (JSON Lines).")
def measure(images: tuple[Path, ...], neutral: Path | None, as_json: bool) -> None:
    """Measure the face in any images (A1111 outputs, photos): AU intensities, head pose, emotions, identity.

    Each image gives file, face (true/false), aus (AU -> intensity 0..1), pose (yaw, pitch, roll in degrees),
    emotions (classifier probabilities, when it is installed) and identity_distance to --neutral.
    docs/scores.md defines every number. Needs the analysis extra.
    """
    import json

    from expressiongrid.analysis.measure import measure_files

    for record in measure_files(images, neutral):
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
            continue
        click.echo(f"{terminal_safe(record['file'])}: " + ("face" if record["face"] else "no face"))
        if record["pose"]:  # whole degrees, rounded as integers so -0.2 is "+0", not "-0"
            click.echo("  pose: " + ", ".join(f"{k} {round(v):+d}°" for k, v in record["pose"].items()))
        if record["aus"]:
            shown = [f"{k} {v:.2f}" for k, v in sorted(record["aus"].items(), key=lambda kv: -kv[1]) if v >= 0.05]
            click.echo("  AUs: " + (", ".join(shown) or "none above 0.05"))
        if record["emotions"]:
            top = sorted(record["emotions"].items(), key=lambda kv: -kv[1])[:3]
            click.echo("  emotions: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
        if record["identity_distance"] is not None:
            click.echo(f"  identity distance to the neutral image: {record['identity_distance']:.3f}"
                       + (" (another person?)" if record["identity_distance"] > 0.6 else ""))
        if record["note"]:
            click.echo(f"  note: {record['note']}")
