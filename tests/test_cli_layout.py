"""The driver's own modules (llmc/*.py) import one way, and stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = sorted((ROOT / "llmc").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every llmc.X (X a driver module) that `path` imports, at any depth, TYPE_CHECKING too."""
    names = {p.stem for p in DRIVER}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y / from . import x
                base = "llmc" + ("." + base if base else "")
            mods = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {m.split(".")[1] for m in mods
                if m.startswith("llmc.") and m.split(".")[1] in names}
    return out - {path.stem}


def test_driver_modules_have_no_import_cycle():
    graph = {p.stem: imported_modules(p) for p in DRIVER}
    assert "api" not in graph["compile"] and "api" not in graph["pipeline"]
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            visit(n, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])


def test_driver_files_and_functions_are_small():
    too_big = []
    for path in DRIVER + [ROOT / "runtime" / "generate.py"]:
        src = path.read_text()
        if len(src.splitlines()) > 400:
            too_big.append(f"{path.name}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    too_big.append(f"{path.name}: {node.name} has {n} lines")
    assert too_big == []
