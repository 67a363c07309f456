"""Tensor-parallel pipelines end to end on simulated ranks: the sharded (and MC2-fused)
graph of a tiny model gives the unsharded graph's logits and tokens (the ALiBi model
compiled by `llmc compile --tp 2` too); the 13B config's ascend910b pipeline at --tp 8
fuses 2 linears per layer."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llmc.artifact import load_artifact
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import parse, print_graph
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import random_weights, tiny_config, write_fixture
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import pipeline_for
from llmc.runtime.generate import Generator
from llmc.runtime.reference import run
from llmc.runtime.simulate import Simulator

from llmc import api
from llmc.compile import build_graph, model_facts

ROOT = Path(__file__).resolve().parents[1]
CONFIG_13B = ROOT / "benchmarks" / "configs" / "llama2-13b.json"
PROMPTS = [[1, 17, 42, 9, 200], [3, 4]]
MC2_KINDS = ("matmul_all_reduce", "matmul_reduce_scatter", "all_gather_matmul")


def compile_tiny(arch: str, target: str, form: str, **parallel):
    """(unsharded graph, compiled graph, pass records, weights) of a tiny model."""
    cfg = parse_config(tiny_config(arch))
    before = build_graph(cfg, naming_for(cfg.source_format), form, last_token_only=False)
    after = parse(print_graph(before))
    recs = api.run_pipeline(after, pipeline_for(target, **parallel),
                            ctx=PassContext(model=model_facts(cfg, form)))
    w = random_weights(arch, seed=0)
    return before, after, {r.name: r for r in recs}, {k: w[k] for k in before.params}


class SimulatedGenerator(Generator):
    """The paged generator over a sharded inference graph: each rank keeps its own caches
    (its kv heads), and every step runs all ranks in lockstep."""

    def __init__(self, graph, weights, nranks: int):
        super().__init__(graph, weights)
        self.sim = Simulator(graph, weights, nranks)

    def step(self, s, ids, this_time, enc, dec):
        if not hasattr(s, "rank_caches"):
            s.rank_caches = [dict(s.caches) for _ in range(self.sim.nranks)]
        feeds = {"input_ids": ids, "seq_lens_this_time": np.asarray(this_time, np.int32),
                 "seq_lens_encoder": np.asarray(enc, np.int32),
                 "seq_lens_decoder": np.asarray(dec, np.int32), "block_tables": s.tables}
        outs = self.sim.run([{**feeds, **c} for c in s.rank_caches])
        for caches, rank_outs in zip(s.rank_caches, outs):
            for v, arr in zip(self.cache_inputs, rank_outs[1:]):
                caches[v.name] = arr
        for rank_outs in outs[1:]:
            np.testing.assert_array_equal(rank_outs[0], outs[0][0])
        return outs[0][0]


def test_ascend910b_tp8_generates_the_unsharded_tokens():
    before, after, recs, w = compile_tiny("llama_gqa", "ascend910b", "inference", tp=8)
    assert not [n for n, r in recs.items() if r.mismatch]
    assert recs["fuse_mc2"].matched == 2 * 3
    assert after.op_counts()["matmul_all_reduce"] == 2 * 3
    want = Generator(before, w)
    got = SimulatedGenerator(after, w, 8)
    sb, lb = want.prefill(PROMPTS, 4)
    sa, la = got.prefill(PROMPTS, 4)
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4)
    assert got.generate(PROMPTS, 5) == want.generate(PROMPTS, 5)


def full_logits(g, w, nranks=None):
    ids = np.array([[1, 17, 42, 9, 200, 3, 4, 77]], np.int64)
    feeds = {"input_ids": ids, "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
    if nranks is None:
        return run(g, feeds, w)[0]
    outs = Simulator(g, w, nranks).run(feeds)
    for rank_outs in outs[1:]:
        np.testing.assert_array_equal(rank_outs[0], outs[0][0])
    return outs[0][0]


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_full_form_tp_with_mc2_equals_unsharded(tp, sequence_parallel):
    before, after, recs, w = compile_tiny("llama_gqa", "cpu", "full", tp=tp,
                                          sequence_parallel=sequence_parallel, mc2=True)
    assert not [n for n, r in recs.items() if r.mismatch]
    fused = after.op_counts()
    # 3 layers: o_proj and down_proj; with sequence parallel also the merged qkv and
    # gate_up linears and the lm_head read one gathered input each
    want = ({"matmul_reduce_scatter": 6, "all_gather_matmul": 7} if sequence_parallel
            else {"matmul_all_reduce": 6})
    assert {k: fused.get(k, 0) for k in MC2_KINDS} == {**dict.fromkeys(MC2_KINDS, 0), **want}
    assert recs["fuse_mc2"].matched == recs["fuse_mc2"].expected == sum(want.values())
    np.testing.assert_allclose(full_logits(after, w, tp), full_logits(before, w),
                               rtol=1e-4, atol=1e-4)


def test_llama2_13b_ascend910b_tp8_fuses_80_and_reports_bytes_per_rank(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "compile", "--config", str(CONFIG_13B),
                        "--target", "ascend910b", "--tp", "8", "-o", str(tmp_path / "a")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "[fuse_mc2]  matched 80 (expected 80)" in r.stderr
    assert "WARNING" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("--- Running IR pass [shard_tensor_parallel]")
    p = json.loads((tmp_path / "a" / "report.json").read_text())["parallel"]
    assert p["tp"] == 8 and p["mc2"] and p["param_elements"] == 13_015_864_320
    # norms are replicated, everything else is split 8 ways
    assert p["param_elements"] / 8 < p["param_elements_per_rank"] < p["param_elements"] / 7.9
    per_rank = f"{p['param_elements_per_rank']:,} parameters per rank"
    assert per_rank in r.stdout
    log = (tmp_path / "a" / "pass_log.txt").read_text()
    note = (f"NOTE: [shard_tensor_parallel] tp=8: parameters {p['param_bytes']:,} bytes whole, "
            f"{p['param_bytes_per_rank']:,} bytes per rank")
    assert note in log and note in r.stderr
    # the config's torch_dtype is float16: 2 bytes per element
    assert p["param_bytes"] == 2 * p["param_elements"]


def test_baichuan2_13b_alibi_ascend910b_tp2_compiles_and_generates_the_unsharded_tokens(tmp_path):
    """`llmc compile <ALiBi fixture> --target ascend910b --tp 2`: block attention reads each
    rank's share of the model's ALiBi slopes; the simulated ranks generate what the
    unsharded graph does."""
    model = write_fixture(tmp_path / "m", "baichuan2_13b", "hf-numpy", seed=0)
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "compile", str(model), "--target",
                        "ascend910b", "--tp", "2", "-o", str(tmp_path / "a")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr
    assert "[fuse_mc2]  matched 4 (expected 4)" in r.stderr  # 2 layers: o_proj, down_proj
    art = load_artifact(tmp_path / "a")
    attention = [op for op in art.graph.ops if op.kind == "block_multihead_attention"]
    assert len(attention) == 2
    for op in attention:
        slopes = op.operand("alibi_slopes").producer
        assert slopes.kind == "shard" and slopes.operand("x").producer.kind == "constant"
        assert op.attrs["num_heads"] == 3 and op.attrs["use_alibi"]
    cfg = parse_config(json.loads((model / "config.json").read_text()))
    before = build_graph(cfg, naming_for(cfg.source_format), "inference")
    weights = art.weights()
    want, got = Generator(before, weights), SimulatedGenerator(art.graph, weights, 2)
    _, lb = want.prefill(PROMPTS, 4)
    _, la = got.prefill(PROMPTS, 4)
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4)
    assert got.generate(PROMPTS, 6) == want.generate(PROMPTS, 6)
