"""``expressiongrid expressions``: the expression sets that become a study's rows."""

from __future__ import annotations

from pathlib import Path

import click

from expressiongrid.cli._common import echo_json, terminal_safe


@click.group(epilog="\b\nExample:\n  expressiongrid expressions list seed-study")
def expressions() -> None:
    """Expression sets (TOML files in expressions/): the rows of a study."""


def _set_as_dict(expression_set) -> dict:
    return {
        "id": expression_set.id,
        "title": expression_set.title,
        "description": expression_set.description,
        "source": expression_set.source,
        "path": str(expression_set.path) if expression_set.path else None,
        "expressions": [
            {
                "id": e.id,
                "label": e.label,
                "prompt": e.prompt,
                "action_units": list(e.action_units),
                "notes": e.notes,
            }
            for e in expression_set.expressions
        ],
    }


@expressions.command("list", epilog="\b\nExample:\n  expressiongrid expressions list\n"
                     "  expressiongrid expressions list seed-study\n"
                     "  expressiongrid expressions list my_rows.toml --json")
@click.argument("file", required=False, metavar="[FILE]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(file: str | None, as_json: bool) -> None:
    """List the built-in expression sets, or the expressions of FILE (a .toml path or a set name).

    Each expression shows its id, grid label, action units (FACS) and the prompt text that replaces
    {expression} in a study prompt. A set file with problems is reported with every problem at once.
    """
    from expressiongrid.study import expressions as ex

    if file is None:
        loaded, broken = [], []
        for path in ex.expression_set_files():
            try:
                loaded.append(ex.load_expression_set(path))
            except ex.ExpressionSetError as exc:
                broken.append((path, exc))
        if as_json:
            echo_json([{**_set_as_dict(s), "expressions": len(s)} for s in loaded]
                      + [{"path": str(p), "error": str(e), "problems": e.problems} for p, e in broken])
            return
        if not loaded and not broken:
            click.echo("no expression sets found (looked in ./expressions and the project's expressions/)")
            return
        width = max([len(s.id) for s in loaded] + [len(p.stem) for p, _ in broken])
        for s in loaded:
            click.echo(f"{s.id:<{width}}  {len(s):>3} expressions  {s.title}  ({s.path})")
        for path, exc in broken:
            click.echo(f"{path.stem:<{width}}  invalid: {exc} (details: expressiongrid expressions list {path})")
        click.echo("\nShow one: expressiongrid expressions list NAME")
        return

    path = ex.find_expression_set(file)
    if path is None:
        path = Path(file)  # the loader says it is missing and lists the sets there are
    expression_set = ex.load_expression_set(path)
    if as_json:
        echo_json(_set_as_dict(expression_set))
        return
    click.echo(f"{expression_set.id}: {expression_set.title} ({len(expression_set)} expressions, {expression_set.path})")
    if expression_set.source:
        click.echo(f"source: {expression_set.source}")
    id_w = max(len(e.id) for e in expression_set.expressions)
    label_w = max(len(e.label) for e in expression_set.expressions)
    au_texts = ["+".join(e.action_units) or "-" for e in expression_set.expressions]
    au_w = max(max(len(t) for t in au_texts), len("AUs"))
    click.echo(f"\n{'id':<{id_w}}  {'label':<{label_w}}  {'AUs':<{au_w}}  prompt")
    for e, aus in zip(expression_set.expressions, au_texts):
        click.echo(terminal_safe(f"{e.id:<{id_w}}  {e.label:<{label_w}}  {aus:<{au_w}}  {e.prompt}"))
