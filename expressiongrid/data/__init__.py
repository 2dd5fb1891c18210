"""Data shipped inside the package: expression sets and the example study and character templates.

The templates (``templates/examples/seed-study.toml``, ``templates/characters/*.toml``) are what a checkout
shows as ``examples/`` and ``characters/``; ``expressiongrid init DIR`` writes them for installed copies.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from expressiongrid.errors import UsageError


def template_files() -> dict[str, bytes]:
    """The example study and character templates: relative path (``examples/seed-study.toml``) -> content."""
    out: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            elif child.name.endswith((".toml", ".md")):
                out[rel] = child.read_bytes()

    walk(resources.files(__name__) / "templates", "")
    return out


def write_templates(dest: str | Path, force: bool = False) -> list[Path]:
    """Write the templates into `dest` (created if needed), keeping their layout so the study's relative paths
    (``../characters/mine/*.toml``) hold. Refuses, listing them, to overwrite existing files unless `force`."""
    dest = Path(dest)
    files = template_files()
    existing = [dest / rel for rel in files if (dest / rel).exists()]
    if existing and not force:
        raise UsageError(f"{dest}: would overwrite {', '.join(str(p) for p in existing)}; "
                         "choose another folder or pass --force")
    written = []
    for rel, content in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    (dest / "characters" / "mine").mkdir(exist_ok=True)
    return written
