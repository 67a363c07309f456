"""`llmc export ARTIFACT --format onnx -o DIR`, the artifact → ONNX Runtime model path, and
which ONNX Runtime kernels the cpu target's cache form lowers to."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cache_tools import cache_graph, weights_for
from clitools import run_cli

from llmc.compiler.errors import LlmcError
from llmc.frontends import fixtures
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.onnx import lower_graph
from llmc.runtime.reference import run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fixtures.write_fixture(tmp_path_factory.mktemp("ck"), "llama_gqa")


def test_export_cli_writes_a_checked_model(monkeypatch, capsys, tmp_path, checkpoint):
    art = tmp_path / "art"
    code, _, err = run_cli(monkeypatch, capsys, "compile", checkpoint, "--target", "cpu",
                           "--form", "cache", "-o", art)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "export", art, "--format", "onnx", "-o",
                             tmp_path / "onnx")
    assert code == 0, err
    assert "wrote" in out and (tmp_path / "onnx" / "model.onnx.data").stat().st_size > 0
    onnx.checker.check_model(str(tmp_path / "onnx" / "model.onnx"), full_check=True)
    code, _, err = run_cli(monkeypatch, capsys, "export", art, "--format", "tflite", "-o",
                           tmp_path / "x")
    assert code == 2 and "'tflite' is not one of 'onnx'" in err


def test_export_of_an_ascend_artifact_says_what_to_do(monkeypatch, capsys, tmp_path, checkpoint):
    art = tmp_path / "art"
    assert run_cli(monkeypatch, capsys, "compile", checkpoint, "--target", "ascend910b", "-o",
                   art)[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, "export", art, "-o", tmp_path / "onnx")
    assert code == 2
    assert "has no ONNX lowering (target ascend910b); compile for the cpu target" in err
    assert "--runtime reference" in err
    assert not (tmp_path / "onnx" / "model.onnx.data").exists()


def test_artifact_model_matches_the_reference(tmp_path, checkpoint):
    from llmc.compile import compile_model, write_artifact
    from llmc.onnx_export import ort_model_for_artifact, ort_model_for_checkpoint

    c = compile_model(checkpoint, "cpu", form="cache")
    write_artifact(c, tmp_path / "art")
    m = ort_model_for_artifact(tmp_path / "art")
    assert (tmp_path / "art" / "onnx" / "model.onnx").exists()
    ref = ReferenceCacheLM(c.graph, weights_for("llama_gqa", c.graph))
    ids = np.array([[3, 9, 27, 81]])
    want = ref.forward(ref.new_cache(1, 8), [0], ids, np.array([0]))
    np.testing.assert_allclose(m.forward(m.new_cache(1, 8), [0], ids, np.array([0])), want,
                               rtol=1e-4, atol=1e-4)
    write_artifact(compile_model(checkpoint, "mlu370", form="full"), tmp_path / "full")
    with pytest.raises(LlmcError, match="full-form artifact for mlu370 does not run on "
                                        "onnxruntime.*--form cache.*--runtime reference"):
        ort_model_for_artifact(tmp_path / "full")
    assert not (tmp_path / "full" / "onnx").exists()  # no recompiling behind the user's back
    write_artifact(compile_model(checkpoint, "ascend910b"), tmp_path / "npu")
    with pytest.raises(LlmcError, match="inference-form artifact for ascend910b does not run"):
        ort_model_for_artifact(tmp_path / "npu")
    m2 = ort_model_for_checkpoint(checkpoint, workdir=tmp_path / "w")
    np.testing.assert_allclose(m2.forward(m2.new_cache(1, 8), [0], ids, np.array([0])), want,
                               rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def cache_artifact(tmp_path_factory, checkpoint):
    from llmc.compile import compile_model, write_artifact

    return write_artifact(compile_model(checkpoint, "cpu"), tmp_path_factory.mktemp("a") / "art")


def _copy(art, tmp_path):
    import shutil

    return shutil.copytree(art, tmp_path / "art")


def test_the_export_is_cached_atomically_in_the_artifact(tmp_path, cache_artifact, monkeypatch):
    import os

    import llmc.onnx_export as ox

    art = _copy(cache_artifact, tmp_path)
    dead = _dead_pid()
    (art / f".onnx.tmp-{dead}-abc").mkdir()  # left by a killed run: swept
    live = art / f".onnx.tmp-{os.getppid()}-0123"  # a run still going: kept
    live.mkdir()
    ox.ort_model_for_artifact(art)
    assert sorted(p.name for p in art.iterdir() if p.name.startswith(".onnx")) == [live.name]
    live.rmdir()
    first = (art / "onnx" / "model.onnx").stat().st_mtime_ns
    ox.ort_model_for_artifact(art)  # reused while newer than the artifact
    assert (art / "onnx" / "model.onnx").stat().st_mtime_ns == first
    os.utime(art / "model.llmc", ns=(first + 10**9, first + 10**9))

    def killed(art_dir, out):
        (Path(out) / "model.onnx.data").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ox, "export_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        ox.ort_model_for_artifact(art)
    assert sorted(p.name for p in art.iterdir()) == ["model.llmc", "onnx", "pass_log.txt",
                                                     "report.json", "weights.json"]
    assert (art / "onnx" / "model.onnx").stat().st_mtime_ns == first  # the old one, whole
    monkeypatch.undo()
    ox.ort_model_for_artifact(art)  # stale: exported again, replacing the old one
    assert (art / "onnx" / "model.onnx").stat().st_mtime_ns > first
    assert not [p for p in art.iterdir() if p.name.startswith(".onnx.")]


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_read_only_artifact_exports_to_a_temporary_directory(tmp_path, cache_artifact,
                                                                 monkeypatch):
    import os
    import tempfile

    import llmc.onnx_export as ox

    art = _copy(cache_artifact, tmp_path)
    real = os.access

    def access(path, mode, **kw):  # the suite may run as root, which chmod does not stop
        return False if Path(path) == art and mode & os.W_OK else real(path, mode, **kw)

    monkeypatch.setattr(ox.os, "access", access)
    m = ox.ort_model_for_artifact(art)
    assert not (art / "onnx").exists() and m.path.parent.parent == Path(tempfile.gettempdir())
    assert str(m.path.parent) in [t.name for t in ox._PROCESS_EXPORTS]  # removed at exit
    ids = np.array([[3, 9, 27]])
    assert m.forward(m.new_cache(1, 4), [0], ids, np.array([0])).shape == (1, 256)


def node_types(arch):
    _, g, _ = cache_graph(arch, "cpu")
    model = lower_graph(g, weights_for(arch, g))
    return model, [n.op_type for n in model.graph.node]


def test_rope_folds_into_group_query_attention_with_packed_qkv():
    """head_dim 16: per layer SkipSimplifiedLayerNormalization (or the first norm), one
    MatMul for [Q|K|V] read packed by GroupQueryAttention with its own rotary."""
    model, types = node_types("llama")
    assert "RotaryEmbedding" not in types and "Split" in types
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2
    for n in gqa:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["do_rotary"] == 1 and list(n.input)[1:3] == ["", ""]
        assert n.input[7] and n.input[8]  # cos / sin caches
    assert types.count("SkipSimplifiedLayerNormalization") == 3
    assert types.count("MatMul") == 4 * 2 + 1


def test_small_heads_keep_rotary_embedding():
    """head_dim 8: GroupQueryAttention's rotary needs a multiple of 16, so RotaryEmbedding."""
    model, types = node_types("llama_gqa")
    assert types.count("RotaryEmbedding") == 2 * 3
    for n in model.graph.node:
        if n.op_type == "GroupQueryAttention":
            assert not any(a.name == "do_rotary" for a in n.attribute)


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_full_form_lowers_too(arch):
    """The cpu target's full form (attention without cache) on ORT = reference logits."""
    from llmc import api
    from llmc.compile import build_graph, model_facts
    from llmc.compiler.passmanager import PassContext
    from llmc.frontends.naming import naming_for
    from llmc.passes.pipelines import pipeline_for

    cfg, _, _ = cache_graph(arch)
    g = build_graph(cfg, naming_for(cfg.source_format), "full")
    api.run_pipeline(g, pipeline_for("cpu"), ctx=PassContext(model=model_facts(cfg, "full")))
    assert "attention" in g.op_counts()
    w = weights_for(arch, g)
    sess = ort.InferenceSession(lower_graph(g, w).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ids = np.array([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]])
    feeds = {"input_ids": ids, "position_ids": np.broadcast_to(np.arange(5), ids.shape).copy()}
    np.testing.assert_allclose(sess.run(None, feeds)[0], run(g, feeds, w)[0], rtol=1e-4,
                               atol=1e-4)
