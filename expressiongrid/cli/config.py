"""`expressiongrid config ...`: where the configuration file is and what it says."""

from __future__ import annotations

import json

import click

from expressiongrid.cli._common import echo_json


@click.group(epilog="\b\nExample:\n  expressiongrid config show\n  EXPRESSIONGRID_CONFIG=my.toml expressiongrid config show")
def config() -> None:
    """The user configuration: model folders (an A1111/Forge install) and defaults (dtype, device, sampler)."""


@config.command("path", epilog="Example:\n\n  $EDITOR \"$(expressiongrid config path)\"")
def path_command() -> None:
    """Print the configuration file's path (EXPRESSIONGRID_CONFIG, else the platform's user config folder)."""
    from expressiongrid.config import config_path

    click.echo(str(config_path()[0]))


@config.command("show", epilog="Example:\n\n  expressiongrid config show --json")
@click.option("--json", "as_json", is_flag=True, help="Print the configuration as JSON.")
def show_command(as_json: bool) -> None:
    """Print the effective configuration as TOML, each value with where it came from."""
    from expressiongrid.config import KINDS, load

    cfg = load()
    if as_json:
        echo_json({
            "file": str(cfg.path), "file_source": cfg.path_source, "file_exists": cfg.exists,
            "paths": {k: [{"folder": str(f.path), "source": f.source, "exists": f.exists} for f in cfg.folders[k]]
                      for k in KINDS},
            "defaults": {k: {"value": s.value, "source": s.source} for k, s in cfg.defaults.items()},
        })
        return
    state = "" if cfg.exists else " (not there: built-in settings)"
    click.echo(f"# configuration file: {cfg.path}{state}")
    click.echo(f"# chosen by: {cfg.path_source}")
    click.echo("[paths]")
    for kind in KINDS:
        folders = cfg.folders[kind]
        if not folders:
            click.echo(f"{kind} = []  # none configured")
            continue
        click.echo(f"{kind} = [")
        for f in folders:
            note = f.source + ("" if f.exists else ", folder not present: skipped")
            click.echo(f"    {json.dumps(str(f.path))},  # {note}")
        click.echo("]")
    click.echo("[defaults]")
    for key, setting in cfg.defaults.items():
        if setting.value is None:
            click.echo(f"# {key}: not set (built-in: cuda, then mps, then cpu)")
        else:
            click.echo(f"{key} = {json.dumps(setting.value)}  # {setting.source}")
