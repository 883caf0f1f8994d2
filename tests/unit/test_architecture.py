"""Dependencies point one way only (docs/internals.md):

cli -> (wlm, gateway, runtime) -> (convert, unpack, store) -> registry -> oci -> (errors, config)

A module may import its own package and packages of a strictly lower layer.  ``TYPE_CHECKING``-only
imports count too: a type that needs an upward import is a design smell.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "shifter"
LAYER = {"errors": 0, "munge": 1, "config": 1, "oci": 2, "registry": 3, "convert": 4, "unpack": 4, "store": 4,
         "gateway": 5, "runtime": 5, "wlm": 5, "cli": 6}
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "shifter" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if _package(p) in LAYER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    own = _package(path)
    for target in _imports(path):
        if target == own or target not in LAYER:
            continue
        ok = LAYER[target] < LAYER[own] or (own, target) in ALLOWED_SIDEWAYS
        assert ok, f"{path.relative_to(SRC)} (layer {own}) imports shifter.{target}: dependencies must point down"
