"""The package's layers import only downward, and the light layers import no torch (docs/internals.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "expressiongrid"

# Lower numbers are lower layers. A module may import its own area and any area of a lower layer;
# the foundation (layer 0) modules may import each other.
LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "limits": 0, "paths": 0, "text": 0, "samplers": 0, "tiny": 0, "templating": 0,
    "data": 0,
    "prompts": 1, "store": 1,
    "characters": 2,
    "engine": 3, "output": 3,
    "config": 4,
    "study": 5,
    "run": 6,
    "analysis": 7, "judge": 7,
    "report": 8,
    "cli": 9, "__main__": 10,
}

# Areas whose modules must not import these at module level (``--help``, study validation, prompt
# explanation and the sampler list stay fast and work without the heavy libraries loaded).
LIGHT_AREAS = ("prompts", "samplers", "study", "store", "text", "paths", "errors", "limits", "tiny", "config")
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out.append((name, path))
    return out


def _area(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in LAYERS else "__init__"  # e.g. ``from expressiongrid import __version__``


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    """Every ``expressiongrid`` module imported anywhere in the tree (lazy imports in functions count)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "expressiongrid":
                found += [(f"expressiongrid.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] == "expressiongrid"]


def _module_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Top-level imports, including those inside module-level ``if``/``try`` blocks, not in functions."""
    found = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return found


MODULES = _modules()


def test_every_area_has_a_layer():
    assert {_area(name) for name, _ in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_downward(module, path):
    here = _area(module)
    upward = []
    for name, line in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        there = _area(name)
        if there == here or (LAYERS[there] == 0 and LAYERS[here] == 0):
            continue
        if LAYERS[there] >= LAYERS[here]:
            upward.append(f"line {line}: {name} (layer {LAYERS[there]} {there}, this is {LAYERS[here]} {here})")
    assert not upward, f"{module} imports sideways or upward:\n" + "\n".join(upward)


@pytest.mark.parametrize("module,path", [(m, p) for m, p in MODULES if _area(m) in LIGHT_AREAS],
                         ids=[m for m, _ in MODULES if _area(m) in LIGHT_AREAS])
def test_light_layers_import_no_heavy_library_at_module_level(module, path):
    heavy = [f"line {line}: {name}" for name, line in _module_level_imports(ast.parse(path.read_text(encoding="utf-8")))
             if name.split(".")[0] in HEAVY]
    assert not heavy, f"{module} imports at module level:\n" + "\n".join(heavy)


def test_the_checker_sees_an_upward_import():
    tree = ast.parse("def f():\n    from expressiongrid.run.runner import run_study\n")
    assert _imports(tree) == [("expressiongrid.run.runner", 2)]
    assert LAYERS[_area("expressiongrid.run.runner")] > LAYERS[_area("expressiongrid.prompts.calls")]
    top = ast.parse("import torch\ntry:\n    import numpy\nexcept ImportError:\n    pass\ndef g():\n    import diffusers\n")
    assert sorted(n for n, _ in _module_level_imports(top)) == ["numpy", "torch"]
