"""`expressiongrid characters ...`: inspect, list and fetch LoRA/embedding characters."""

from __future__ import annotations

from pathlib import Path

import click

from expressiongrid.cli._common import echo_json, terminal_safe


@click.group(epilog="Example:\n\n  expressiongrid characters inspect characters/anna_v2.safetensors")
def characters() -> None:
    """Inspect, list and download character models (LoRAs and embeddings)."""


def _fmt(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} ({v})" for k, v in value.items())
    return str(value)


@characters.command("inspect", epilog="Example:\n\n  expressiongrid characters inspect anna_v2.safetensors --json")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def inspect_command(file: Path, as_json: bool) -> None:
    """Show what a LoRA or embedding FILE is: format, model family, rank/alpha, modules, training tags, hashes."""
    from expressiongrid.characters.check import inspect_file
    from expressiongrid.characters.lora import FAMILY_NAMES
    from expressiongrid.errors import CharacterError, UsageError

    try:
        info = inspect_file(file)
    except CharacterError as exc:  # the FILE given is the problem: bad input (exit 2), as import and measure say
        raise UsageError(str(exc)) from exc
    if as_json:
        echo_json(info)
        return
    family = FAMILY_NAMES.get(info["family"], info["family"])
    click.echo(f"{info['file']}")
    click.echo(f"  kind:     {info['kind']} ({info['format']} format)")
    click.echo(f"  family:   {family} ({info['family_reason']})")
    if info["kind"] == "lora":
        mods = info["modules"]
        click.echo(f"  modules:  {mods['unet']} UNet, {mods['text_encoder']} text encoder ({mods['conv']} conv/LoCon)")
        alpha = "none (scale 1)" if info["alpha"] is None else _fmt(info["alpha"])
        vary = " - alphas vary per module" if info["alphas_vary"] else ""
        click.echo(f"  rank:     {_fmt(info['rank'])}   alpha: {alpha}{vary}")
    else:
        click.echo(f"  vectors:  {info['vectors']} x {info['width']}")
    training = info.get("training") or {}
    labels = {"base_model": "base model", "base_checkpoint": "trained on", "resolution": "resolution",
              "training_images": "images", "epochs": "epochs", "steps": "steps", "trigger_words": "trigger words",
              "top_tags": "top tags", "expression_tags": "expression tags", "expression_tags_absent": "never tagged",
              "network_dim": "network dim", "network_alpha": "network alpha", "step": "step",
              "sd_checkpoint_name": "trained on", "output_name": "output name"}
    for key, label in labels.items():
        if key in training:
            click.echo(f"  {label + ':':<17} {_fmt(training[key])}")
    if info["kind"] == "lora" and "top_tags" in training and not training.get("expression_tags"):
        click.echo("  note: no expression tags in the captions; expressions may be hard for this character")
    for key, value in info["hashes"].items():
        click.echo(f"  {key + ':':<17} {value}")


@characters.command("list", epilog="Example:\n\n  expressiongrid characters list characters/")
@click.argument("directory", required=False, default="characters",
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_command(directory: Path, as_json: bool) -> None:
    """List character files and model files in DIRECTORY (default: ./characters) with kind and label."""
    from expressiongrid.characters.files import list_characters

    entries = list_characters(directory)
    if as_json:
        echo_json(entries)
        return
    if not entries:
        click.echo(f"no character or model files in {directory}")
        return
    width = max(len(str(e.path.relative_to(directory))) for e in entries)
    for e in entries:
        rel = str(e.path.relative_to(directory))
        click.echo(terminal_safe(f"{rel:<{width}}  {e.kind:<10} {e.label}" + (f"  [{e.detail}]" if e.detail else "")))


@characters.command("fetch", epilog="\b\nExample:\n  CIVITAI_API_KEY=... expressiongrid characters fetch civitai:128713\n"
                                      "  expressiongrid characters fetch hf:owner/repo/anna.safetensors")
@click.argument("spec")
@click.option("--dir", "dest", default="characters", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the model and its character file.")
@click.option("--force", is_flag=True, help="Download even if civitai says it is for another model family.")
def fetch_command(spec: str, dest: Path, force: bool) -> None:
    """Download SPEC (civitai:VERSION_ID or hf:OWNER/REPO/FILE), verify its sha256, write a character file.

    The civitai API key is read from CIVITAI_API_KEY and never written anywhere.
    """
    from expressiongrid.characters.fetch import fetch

    result = fetch(spec, dest, force=force)
    click.echo(f"downloaded {result.model_path} ({result.kind}, sha256 {result.sha256[:10]}...)")
    click.echo(f"character file: {result.character_path}")
