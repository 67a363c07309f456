"""Small files and small functions in the product code (tests and fixture data aside):
no file over 400 lines, no function over 60 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def product_files() -> list[Path]:
    files = [p for d in ("compiler", "passes", "frontends", "runtime") for p in (ROOT / d).rglob("*.py")]
    return sorted(files + list((ROOT / "llmc").glob("*.py")))


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_file_over_limit():
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in product_files()
           if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not big, "files over %d lines:\n" % MAX_FILE_LINES + "\n".join(big)


def test_no_function_over_limit():
    long = [f for p in product_files() for f in long_functions(p)]
    assert not long, "functions over %d lines:\n" % MAX_FUNCTION_LINES + "\n".join(long)
