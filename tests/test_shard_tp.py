"""shard_tensor_parallel, numerically: N simulated ranks of the sharded graph give the
unsharded graph's logits (and KV caches) within 1e-5, for every fixture architecture, every
graph form and checkpoint layout, tp 2 and 4, tp 8 over 2 kv heads (replicated kv heads),
sequence parallelism and vocab-sliced logits; sizes that do not divide are one-line errors."""

import numpy as np
import pytest
from shard_tp_tools import (
    ARCHES,
    Model,
    SimGenerator,
    cache_feeds,
    check_form,
    full_feeds,
    model,
    shard,
)

from llmc.compile import build_graph
from llmc.compiler.errors import LlmcError
from llmc.frontends.config import parse_config
from llmc.frontends.fixture_configs import dims
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.naming import HF
from llmc.runtime.generate import Generator
from llmc.runtime.reference import random_weights, run
from llmc.runtime.simulate import simulate

PROMPTS = [[3, 5, 7, 9, 11, 13], [2, 4]]


def _divides(arch: str, tp: int) -> bool:
    return dims(arch)["heads"] % tp == 0


def _check(arch: str, form: str, tp: int, layout: str = "hf", **options):
    m = model(arch, form, layout)
    if form == "full":
        check_form(m, tp, full_feeds(m.cfg), **options)
    elif form == "cache":
        check_form(m, tp, cache_feeds(m.graph, m.cfg), **options)
    else:
        _check_generation(m, tp)


def _check_generation(m, tp: int):
    """Prefill logits, one decode step's logits and greedy tokens through the block caches."""
    g, _, _ = shard(m, tp)
    ref, sim = Generator(m.graph, m.weights), SimGenerator(m.graph, g, m.weights, tp)
    s_ref, want = ref.prefill(PROMPTS, 3)
    s_sim, got = sim.prefill(PROMPTS, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    tok = np.argmax(want, -1)
    np.testing.assert_allclose(sim.decode(s_sim, tok), ref.decode(s_ref, tok), rtol=1e-5, atol=1e-5)
    assert sim.generate(PROMPTS, 3) == ref.generate(PROMPTS, 3)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("form", ["full", "cache", "inference"])
@pytest.mark.parametrize("arch", ARCHES)
def test_every_arch_and_form_equals_the_unsharded_graph(arch, form, tp):
    if not _divides(arch, tp):
        with pytest.raises(LlmcError, match=rf"num_attention_heads \({dims(arch)['heads']}\) "
                                            rf"is not divisible by tp={tp}"):
            shard(model(arch, form), tp)
    else:
        _check(arch, form, tp)


@pytest.mark.parametrize("form", ["full", "cache", "inference"])
@pytest.mark.parametrize("layout", ["hf", "paddle", "paddle-fused"])
def test_kv_heads_replicated_when_tp_exceeds_them(layout, form):
    """llama_gqa: 8 heads, 2 kv heads; at tp=8 each kv head serves 4 ranks."""
    _check("llama_gqa", form, 8, layout)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("form", ["full", "cache", "inference"])
@pytest.mark.parametrize("layout", ["paddle", "paddle-fused"])
def test_paddle_layouts(layout, form, tp):
    """[in, out] weights; PaddleNLP's qkv_proj grouped per kv head."""
    _check("llama_gqa", form, tp, layout)


@pytest.mark.parametrize("form", ["full", "cache", "inference"])
def test_tied_embedding(form):
    m = model("llama", form, tied=True)
    assert "lm_head.weight" not in m.graph.params
    if form == "inference":
        _check_generation(m, 2)
    else:
        check_form(m, 2, full_feeds(m.cfg) if form == "full" else cache_feeds(m.graph, m.cfg))


@pytest.mark.parametrize("arch,tp", [("llama_gqa", 2), ("llama_gqa", 4), ("llama_gqa", 8),
                                     ("baichuan2_7b", 2), ("baichuan2_7b", 4),
                                     ("baichuan2_13b", 2)])
def test_sequence_parallel_full_form(arch, tp):
    m = model(arch, "full")
    g = check_form(m, tp, full_feeds(m.cfg, seq=8), sequence_parallel=True)
    kinds = g.op_counts()
    layers = m.cfg.num_layers
    assert kinds["reduce_scatter"] == 2 * layers + 1  # o, down per layer; the embedding
    assert kinds["all_gather"] == 2 * layers + 2  # attention, mlp inputs; lm_head in and out
    assert "all_reduce" not in kinds and "grad_all_reduce" not in kinds


@pytest.mark.parametrize("form", ["cache", "inference"])
def test_sequence_parallel_refuses_the_decoding_forms(form):
    with pytest.raises(LlmcError, match="sequence_parallel needs the full form"):
        shard(model("llama_gqa", form), 2, sequence_parallel=True)


@pytest.mark.parametrize("form", ["full", "cache"])
def test_vocab_parallel_logits_without_the_gather(form):
    """gather_logits=false: rank r returns vocabulary rows r*V/N .. of the logits."""
    m = model("llama_gqa", form)
    tp = 4
    feeds = full_feeds(m.cfg) if form == "full" else cache_feeds(m.graph, m.cfg)
    g, _, _ = shard(m, tp, gather_logits=False)
    assert g.outputs[0].type.shape[-1] == m.cfg.vocab_size // tp
    want = run(m.graph, feeds, m.weights)[0]
    if form == "cache":
        from shard_tp_tools import rank_feeds

        outs = simulate(g, rank_feeds(m.graph, g, feeds, tp), m.weights)
    else:
        outs = simulate(g, feeds, m.weights)
    got = np.concatenate([o[0] for o in outs], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("form", ["full", "cache", "inference"])
def test_multi_query_attention(form, tp):
    """One kv head: every rank holds it whole (parts 1, replicas tp)."""
    cfg = parse_config({**tiny_config("llama"), "num_key_value_heads": 1})
    g = build_graph(cfg, HF, form, last_token_only=False)
    m = Model(cfg, g, random_weights(g, scale=0.3), form)
    if form == "inference":
        _check_generation(m, tp)
    else:
        check_form(m, tp, full_feeds(cfg) if form == "full" else cache_feeds(g, cfg))
