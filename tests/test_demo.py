"""The README's first command: `llmc demo` end to end (checkpoint -> compile -> generate)."""

import json
import subprocess
import sys

import pytest

from llmc.passes.pipelines import ASCEND_VENDOR_PASSES


@pytest.mark.parametrize("target,arch", [("ascend910b", "llama_gqa"), ("cuda", "baichuan2_13b"),
                                         ("cpu", "llama_gqa")])
def test_demo_compiles_and_generates(tmp_path, target, arch):
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "demo", "--workdir", str(tmp_path),
                        "--target", target, "--arch", arch, "-n", "6", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    names = [p["name"] for p in doc["passes"]]
    if target == "ascend910b":
        assert names[: len(ASCEND_VENDOR_PASSES)] == list(ASCEND_VENDOR_PASSES)
    assert not any(p["mismatch"] for p in doc["passes"])
    assert doc["ops_out"] < doc["ops_in"]
    assert doc["max_rel_err_vs_uncompiled"] <= 1e-4
    assert len(doc["new_ids"]) == 6 and doc["new_ids"] == doc["uncompiled_new_ids"]
    assert (tmp_path / f"tiny-{arch}.{target}" / "model.llmc").exists()
    # the per-op targets compile the cache form, which generates on ONNX Runtime
    assert doc["runtime"] == ("reference" if target == "ascend910b" else "onnxruntime")
    assert (tmp_path / f"tiny-{arch}.{target}" / "onnx").exists() == (target != "ascend910b")


def test_demo_says_which_runtime_ran(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "demo", "--workdir", str(tmp_path),
                        "--target", "cpu", "-n", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(runtime: ONNX Runtime, CPU provider)" in r.stdout
    assert "--- Running IR pass [fuse_attention]" in r.stdout
    assert "identical" in r.stdout
