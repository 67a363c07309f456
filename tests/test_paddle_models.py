"""Whole models on the Paddle runtime: the full-form logits of every fixture architecture,
and of the per-op targets' compiled full-form graphs (fused rms_norm, rope, attention,
swiglu, merged qkv / gate_up, lm_head), within 1e-4 of the reference interpreter.
Error measure: max|paddle - reference| / max|reference| over the logits."""

import numpy as np
import pytest

pytest.importorskip("paddle")

from llmc import api  # noqa: E402
from llmc.compile import build_graph, compile_model, model_facts  # noqa: E402
from llmc.compiler.passmanager import PassContext  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.config import parse_config  # noqa: E402
from llmc.frontends.naming import naming_for  # noqa: E402
from llmc.passes.pipelines import pipeline_for  # noqa: E402
from llmc.runtime.generate import full_logits  # noqa: E402
from llmc.runtime.paddle import PaddleProgram  # noqa: E402

TOL = 1e-4
PER_OP_TARGETS = ["cpu", "cuda", "mlu370", "bi150"]


def full_graph(arch: str, target: str | None = None):
    cfg = parse_config(fixtures.tiny_config(arch))
    g = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=False)
    if target is not None:
        api.run_pipeline(g, pipeline_for(target), ctx=PassContext(model=model_facts(cfg, "full")))
    w = fixtures.random_weights(arch, seed=0)
    return cfg, g, {k: w[k] for k in g.params}


def paddle_logits(g, w, ids):
    pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()
    return PaddleProgram(g, w, trainable=False)({"input_ids": ids, "position_ids": pos})[0]


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_full_form_logits_match_reference(arch):
    cfg, g, w = full_graph(arch)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 7))
    got = paddle_logits(g, w, ids).numpy()
    assert got.shape == (2, 7, cfg.vocab_size)
    assert rel_err(got, full_logits(g, w, ids)) < TOL


@pytest.mark.parametrize("target", PER_OP_TARGETS)
@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_compiled_per_op_target_logits_match_reference(arch, target):
    cfg, g, w = full_graph(arch, target)
    fused = {"attention", "rms_norm"} if target in ("mlu370", "bi150") else {
        "attention", "add_rms_norm", "swiglu"}
    assert fused <= set(g.op_counts()), g.op_counts()
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 6))
    _, ref_g, _ = full_graph(arch)
    assert rel_err(paddle_logits(g, w, ids).numpy(), full_logits(ref_g, w, ids)) < TOL


def test_compiled_artifact_graph_gives_last_token_logits(tmp_path):
    fixtures.write_fixture(tmp_path, "llama", "hf-numpy")
    art = compile_model(tmp_path, "cuda", form="full")
    assert {"attention", "swiglu", "slice"} <= set(art.graph.op_counts())
    w = fixtures.read_safetensors_dir(tmp_path)
    ids = np.random.default_rng(3).integers(0, 256, (1, 5))
    got = paddle_logits(art.graph, w, ids).numpy()
    assert got.shape == (1, 1, 256)
    assert rel_err(got, full_logits(art.graph, w, ids)) < TOL


def test_layer_segments_split_at_decoder_layers():
    from llmc.runtime.paddle.segments import segments

    cfg, g, _ = full_graph("llama_gqa")
    segs = segments(g)
    assert [s.layer for s in segs] == [None, *range(cfg.num_layers), None]
    assert [s.start for s in segs[1:]] == [s.stop for s in segs[:-1]]
    for s in segs[1:-1]:  # a layer reads the hidden state, returns the next one
        assert s.inputs and s.outputs


def test_logits_for_generation_match_reference():
    cfg, g, w = full_graph("baichuan2_7b")
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, (1, 5))
    got = PaddleProgram(g, w, trainable=False).logits(ids)
    assert isinstance(got, np.ndarray) and rel_err(got, full_logits(g, w, ids)) < TOL
