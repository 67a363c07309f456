"""Imports go one way (docs/architecture.md): compiler/ imports nothing else of llmc;
passes/, frontends/ and runtime/ import compiler/ only; llmc/ imports everything. No module
imports itself back through another, not even from inside a function."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("compiler", "passes", "frontends", "runtime")
ALLOWED = {
    "compiler": {"compiler"},
    "passes": {"compiler", "passes"},
    "frontends": {"compiler", "frontends"},
    "runtime": {"compiler", "runtime"},
    "llmc": {"compiler", "passes", "frontends", "runtime", "llmc"},
}


def module_files() -> dict[str, Path]:
    """Every llmc module by dotted name; the llmc/<layer> symlinks are read once, as layers."""
    files = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            files[_dotted(Path("llmc") / path.relative_to(ROOT))] = path
    for path in (ROOT / "llmc").glob("*.py"):
        files[_dotted(path.relative_to(ROOT))] = path
    return files


def _dotted(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The llmc modules `name` imports anywhere in its body (function-level included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                         for a in node.names)
    return {m for m in found if m in known and m != name}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "llmc"


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_layering_follows_architecture_doc():
    bad = [f"{m} imports {d}" for m, deps in sorted(import_graph().items()) for d in sorted(deps)
           if layer_of(d) not in ALLOWED[layer_of(m)]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d.startswith(m + "."):  # a package importing its own submodules is no cycle
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph, cyclic", [
    ({"a": {"b"}, "b": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"p": {"p.x"}, "p.x": {"p"}}, False),
])
def test_cycle_finder(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic


def test_import_scan_sees_function_level_imports():
    graph = import_graph()
    assert "llmc.compiler.ir" in graph["llmc.compiler.text"]
    assert all(layer_of(m) in ALLOWED for m in graph)
