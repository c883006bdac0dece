"""The import layering of docs/design.md, read from the source: every `ttmem` import (module level or inside a
function, absolute or relative) goes to the same package or to a lower layer, and no module reaches a ttmem
package through `importlib` or `__import__` (a hidden arrow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ttmem"

# Lowest first; a package may import its own modules and any package of a lower layer. The four leaf
# modules import no ttmem code at all.
LAYERS: list[set[str]] = [
    {"fileio", "progress", "newton_schulz", "fused"},
    {"memory"},
    {"layers"},
    {"models"},
    {"optim"},
    {"data"},
    {"train"},
    {"eval"},
    {"hf", "security", "demo"},
    {"cli"},
    {"__main__"},
]
LEVEL = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def unit_of(path: Path) -> str:
    """The layering unit of a source file: its top-level package or module under ttmem."""
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imported_units(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, unit) of every ttmem import in `path` (a file under the package folder `root`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = list(path.relative_to(root.parent).with_suffix("").parts)[:-1]  # e.g. ["ttmem", "layers"]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join(module + [alias.name]) if len(module) == 1 else ".".join(module) for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "ttmem" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def hidden_imports(path: Path) -> list[int]:
    """Lines that import a ttmem module by a string: importlib.import_module("ttmem...") or __import__."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            target = node.args[0].value
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(target, str) and target.startswith("ttmem"):
                lines.append(node.lineno)
    return lines


SOURCES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def test_every_package_has_a_layer():
    assert {unit_of(p) for p in SOURCES} == set(LEVEL)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers_only(path: Path):
    unit = unit_of(path)
    upward = [
        f"line {line}: {unit} imports {target}"
        for line, target in imported_units(path)
        if target != unit and (LEVEL[target] >= LEVEL[unit] or LEVEL[unit] == 0)
    ]
    assert not upward, upward
    assert not hidden_imports(path), f"{path.name} imports ttmem code by name at lines {hidden_imports(path)}"


def test_the_checker_sees_relative_and_function_level_imports(tmp_path):
    """The parser itself: a relative import two levels up and an import inside a function are both found."""
    fake = tmp_path / "ttmem" / "layers" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..models import x\nfrom . import attention\n\ndef f():\n    from ttmem.cli import main\n"
                    "    import importlib\n    importlib.import_module('ttmem.eval')\n")
    assert imported_units(fake, tmp_path / "ttmem") == [(1, "models"), (2, "layers"), (5, "cli")]
    assert hidden_imports(fake) == [7]
