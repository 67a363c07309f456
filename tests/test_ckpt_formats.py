"""Reading formats: torch pickles refused in one line, optional packages named with the pip
install to run, bf16 decoded by ml_dtypes, and frontends/ imports that go one way."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from clitools import run_cli
from llmc.compiler.errors import LlmcError
from llmc.frontends import fixtures as F
from llmc.frontends.weights import WeightStore

FRONTENDS = Path(__file__).resolve().parent.parent / "frontends"


class _RunsCode:
    """Pickles as a call to os.getcwd: harmless, but not a tensor."""

    def __reduce__(self):
        return (os.getcwd, ())


def _bin_dir(tmp_path, state) -> Path:
    torch = pytest.importorskip("torch")
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def test_pickle_with_code_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    torch = pytest.importorskip("torch")
    d = _bin_dir(tmp_path, {"model.norm.weight": torch.ones(64), "x": _RunsCode()})
    code, out, err = run_cli(monkeypatch, capsys, "inspect", d, "--allow-pickle")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "pytorch_model.bin: holds non-tensor objects (posix.getcwd" in err
    assert "refused" in err
    assert "weights_only" not in err and "Re-running" not in err


@pytest.mark.parametrize("payload, needle", [
    (b"not a pickle", "not a torch checkpoint (unsupported pickle opcode"),
    (b"PK\x03\x04broken zip", "cannot read"),
])
def test_corrupt_torch_bin_is_one_line(monkeypatch, capsys, tmp_path, payload, needle):
    pytest.importorskip("torch")
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    (tmp_path / "pytorch_model.bin").write_bytes(payload)
    code, _, err = run_cli(monkeypatch, capsys, "inspect", tmp_path, "--allow-pickle")
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_nested_training_checkpoint_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    d = _bin_dir(tmp_path, {"model": {"w": torch.ones(2)}, "epoch": 3})
    with pytest.raises(LlmcError, match="nested under key 'model'"):
        WeightStore(d, allow_pickle=True)


def test_legacy_torch_bin_is_read(tmp_path):
    """torch < 1.6 wrote a plain pickle (no zip), which cannot be memory-mapped."""
    torch = pytest.importorskip("torch")
    ref = F.random_weights("llama")
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    torch.save({k: torch.from_numpy(v) for k, v in ref.items()}, tmp_path / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    store = WeightStore(tmp_path, allow_pickle=True)
    np.testing.assert_array_equal(store["model.norm.weight"], ref["model.norm.weight"])


# ---------------------------------------------------------------- optional packages


@pytest.mark.parametrize("module, fmt, install", [
    ("paddle", "paddle", "pip install 'llmc[paddle]'"),
    ("paddle", "paddle-tp2", "pip install 'llmc[paddle]'"),
    ("torch", "hf", "pip install torch transformers"),
    ("transformers", "hf-sharded", "pip install torch transformers"),
])
def test_missing_optional_package_names_the_pip_install(monkeypatch, capsys, tmp_path, module,
                                                        fmt, install):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(LlmcError, match=re.escape(f"'{module}' package, which is not "
                                                  f"installed: run `{install}`")):
        F.write_fixture(tmp_path / "api", "llama", fmt)
    code, _, err = run_cli(monkeypatch, capsys, "fixture", tmp_path / "cli", "--format", fmt)
    assert code == 2 and err.count("\n") == 1 and install in err, err


def test_fixtures_without_optional_packages(monkeypatch, tmp_path):
    for module in ("paddle", "torch", "transformers"):
        monkeypatch.setitem(sys.modules, module, None)
    d = F.write_fixture(tmp_path, "llama", "hf-numpy")
    assert len(WeightStore(d)) == 21


def test_reading_torch_bin_without_torch(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(LlmcError, match="pytorch_model.bin: reading pytorch_model.bin needs the "
                                        "'torch' package.*`pip install torch`"):
        WeightStore(tmp_path, allow_pickle=True)


# ---------------------------------------------------------------- dtypes


def test_bf16_is_decoded_by_ml_dtypes(tmp_path):
    """Values a hand shift gets right too, plus the stored dtype: ml_dtypes.bfloat16."""
    want = np.array([1.0, -2.5, 3.140625, 65280.0, 2.0 ** -130, np.inf], np.float32)
    bits = want.astype(ml_dtypes.bfloat16)
    assert bits.astype(np.float32).tolist() == want.tolist()
    F.write_safetensors(tmp_path, {"w": bits})
    store = WeightStore(tmp_path / "model.safetensors")
    assert store.info("w") == ("bf16", (6,)) and store.raw("w").dtype == ml_dtypes.bfloat16
    assert store["w"].dtype == np.float32 and store["w"].tolist() == want.tolist()
    half = WeightStore(tmp_path / "model.safetensors", compute_dtype="float16")["w"]
    assert half.dtype == np.float16 and half[:3].tolist() == [1.0, -2.5, 3.140625]


def test_paddle_bf16_raw_is_bfloat16(tmp_path):
    import pickle

    x = np.array([[0.5, -1.25]], np.float32)
    state = {"w": x.astype(ml_dtypes.bfloat16).view(np.uint16)}  # paddle.save's bf16 form
    (tmp_path / "m.pdparams").write_bytes(pickle.dumps(state, protocol=4))
    store = WeightStore(tmp_path / "m.pdparams")
    assert store.info("w").dtype == "bf16" and store.raw("w").dtype == ml_dtypes.bfloat16
    assert store["w"].tolist() == x.tolist()


# ---------------------------------------------------------------- module structure


def _sibling_imports(path: Path) -> set[str]:
    """frontends modules `path` imports, at any level (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:
                out.add(mod.split(".")[0] if mod else "")
                if not mod:
                    out.update(a.name for a in node.names)
            elif mod.startswith("llmc.frontends."):
                out.add(mod.split(".")[2])
    return out - {""}


def test_frontends_imports_have_no_cycle():
    graph = {p.stem: _sibling_imports(p) for p in FRONTENDS.glob("*.py")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert "weights" not in graph["paddle_ckpt"] and "errors" in graph["paddle_ckpt"]


def test_frontends_files_and_functions_are_small():
    for p in FRONTENDS.glob("*.py"):
        lines = p.read_text().splitlines()
        assert len(lines) <= 400, f"{p.name}: {len(lines)} lines"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                assert n <= 60, f"{p.name}:{node.lineno} {node.name}: {n} lines"
