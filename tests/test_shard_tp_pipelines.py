"""The target pipelines after shard_tensor_parallel: the sharded graph compiled through each
target's passes still equals the unsharded one on simulated ranks, the per-op fusions
match as often as on the unsharded graph, and greedy decoding through the sharded cache
form gives the same tokens."""

import numpy as np
import pytest
from cache_tools import greedy
from shard_tp_tools import (
    SimCacheLM,
    SimGenerator,
    cache_feeds,
    check_form,
    full_feeds,
    model,
    shard,
)

from llmc.compile import build_graph
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import TARGETS, pipeline_for
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.generate import Generator

PER_OP = ["cpu", "cuda", "mlu370", "bi150"]


def _matches(records) -> dict[str, int]:
    return {r.name: r.matched for r in records if r.name != "shard_tensor_parallel"}


@pytest.mark.parametrize("tp", [2, 8])
@pytest.mark.parametrize("layout", ["hf", "paddle", "paddle-fused"])
@pytest.mark.parametrize("target", PER_OP)
def test_per_op_pipelines_after_sharding(target, layout, tp):
    """Cache form (these targets' default): numerics, and every fusion fires as often as
    without sharding (fuse_qkv / fuse_gate_up merge the weight slices)."""
    m = model("llama_gqa", "cache", layout)
    g = check_form(m, tp, cache_feeds(m.graph, m.cfg), pipeline_for(target))
    _, sharded, _ = shard(m, tp, pipeline_for(target))
    _, plain, _ = shard(m, 1, pipeline_for(target))
    assert _matches(sharded) == _matches(plain)
    assert [r.name for r in sharded if r.mismatch] == [r.name for r in plain if r.mismatch]
    assert {"cached_attention", "all_reduce", "rank"} <= set(g.op_counts())


@pytest.mark.parametrize("arch", ["baichuan2_7b", "baichuan2_13b", "llama"])
def test_cpu_pipeline_on_other_arches(arch):
    m = model(arch, "cache")
    check_form(m, 2, cache_feeds(m.graph, m.cfg), pipeline_for("cpu"))


@pytest.mark.parametrize("sp", [False, True])
def test_full_form_for_generation_keeps_the_last_token_slice_fused(sp):
    """`--form full` builds logits[:, -1:]: the slice still moves before the lm_head."""
    m = model("llama_gqa", "full")
    m.graph = build_graph(m.cfg, naming_for(m.cfg.source_format), "full", last_token_only=True)
    check_form(m, 2, full_feeds(m.cfg), pipeline_for("cpu"), sequence_parallel=sp)
    _, sharded, _ = shard(m, 2, pipeline_for("cpu"), sequence_parallel=sp)
    _, plain, _ = shard(m, 1, pipeline_for("cpu"))
    assert _matches(sharded) == _matches(plain)
    assert _matches(sharded)["fuse_lm_head_slice"] == 1


@pytest.mark.parametrize("layout", ["hf", "paddle-fused"])
@pytest.mark.parametrize("tp", [2, 8])
def test_ascend_pipeline_after_sharding(tp, layout):
    """The inference form through the ascend910b passes: still the same generations (the
    whole-layer fusions do not match across the collectives; see the report)."""
    m = model("llama_gqa", "inference", layout)
    g, _, _ = shard(m, tp, pipeline_for("ascend910b"))
    prompts = [[3, 5, 7, 9, 11], [2, 4]]
    ref, sim = Generator(m.graph, m.weights), SimGenerator(m.graph, g, m.weights, tp)
    s_ref, want = ref.prefill(prompts, 3)
    s_sim, got = sim.prefill(prompts, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert sim.generate(prompts, 4) == ref.generate(prompts, 4)


@pytest.mark.parametrize("arch,tp", [("llama_gqa", 2), ("llama_gqa", 8), ("baichuan2_13b", 2)])
def test_greedy_tokens_through_the_sharded_cache_form(arch, tp):
    m = model(arch, "cache")
    g, _, _ = shard(m, tp, pipeline_for("cpu"))
    prompts = [[5, 9, 3, 7], [11, 2], [4, 4, 4, 8, 1]]
    want, want_steps = greedy(ReferenceCacheLM(m.graph, m.weights), prompts, 6)
    got, got_steps = greedy(SimCacheLM(m.graph, g, m.weights, tp), prompts, 6)
    assert got == want
    for a, b in zip(got_steps, want_steps):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_targets_cover_every_form():
    assert {TARGETS[t].form for t in PER_OP} == {"cache"}
    assert TARGETS["ascend910b"].form == "inference"
