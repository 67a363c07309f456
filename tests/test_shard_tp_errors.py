"""shard_tensor_parallel: one-line errors naming the config field that does not divide or
the op it cannot shard, the options, tp=1, and the per-rank parameter bytes it reports."""

import numpy as np
import pytest
from shard_tp_tools import copy, model, shard

from llmc import api
from llmc.compile import build_graph
from llmc.compiler.errors import LlmcError
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import parse, print_graph
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.naming import HF
from llmc.passes.shard_tp import param_bytes, per_rank_param_bytes

HF_LLAMA = tiny_config("llama")


def _graph(form: str = "cache", **changes):
    cfg = parse_config({**HF_LLAMA, **changes})
    return build_graph(cfg, HF, form, last_token_only=False)


def _run(g, spec: str) -> PassContext:
    ctx = PassContext()
    api.run_pipeline(g, spec, ctx=ctx)
    return ctx


@pytest.mark.parametrize("changes,tp,message", [
    (dict(num_attention_heads=8, num_key_value_heads=8, hidden_size=64), 16,
     r"num_attention_heads \(8\) is not divisible by tp=16"),
    (dict(num_attention_heads=12, num_key_value_heads=3, hidden_size=48), 2,
     r"num_key_value_heads \(3\) and tp=2: neither divides the other"),
    (dict(intermediate_size=170), 4, r"intermediate_size \(170\) is not divisible by tp=4"),
    (dict(vocab_size=250), 4, r"vocab_size \(250\) is not divisible by tp=4"),
])
@pytest.mark.parametrize("form", ["full", "cache", "inference"])
def test_sizes_that_do_not_divide(form, changes, tp, message):
    g = _graph(form, **changes)
    with pytest.raises(LlmcError, match=message) as e:
        _run(g, f"shard_tensor_parallel{{tp={tp}}}")
    assert "\n" not in str(e.value).split("\n  passes already run")[0]


def test_tp_one_leaves_the_graph_alone():
    g = _graph()
    before = print_graph(g)
    recs = api.run_pipeline(g, "shard_tensor_parallel")
    assert print_graph(g) == before
    assert (recs[0].matched, recs[0].expected) == (0, 0)


@pytest.mark.parametrize("spec,message", [
    ("shard_tensor_parallel{tp=0}", "option 'tp' must be >= 1, got 0"),
    ("shard_tensor_parallel{tp=two}", "option 'tp' expects int"),
    ("shard_tensor_parallel{sequence_parallel=maybe}", "option 'sequence_parallel' expects bool"),
    ("shard_tensor_parallel{pp=2}", "unknown option 'pp'"),
])
def test_option_errors(spec, message):
    with pytest.raises(LlmcError, match=message):
        _run(_graph(), spec)


def test_a_bias_it_does_not_shard_is_an_error_naming_the_op():
    """A per-feature bias on q (Qwen-style) is not a projection weight this pass knows: the
    re-inferred types stop matching and the error names the op."""
    g = _graph("full")
    q = next(op for op in g.ops if op.kind == "linear" and "q_proj" in op.operand("w").name)
    text = print_graph(g).replace(
        "param @model.norm.weight", "param @model.layers.0.self_attn.q_bias: f32[64]\n"
        "  param @model.norm.weight")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"%{q.output.name} ="))
    name = q.output.name
    text = text.replace(line, line.replace(f"%{name} =", f"%{name}_nobias =") + "\n  " +
                        f"%{name} = add(%{name}_nobias, @model.layers.0.self_attn.q_bias)"
                        f" : {q.output.type}")
    with pytest.raises(LlmcError, match=r"`%\S+ = add\(.*q_bias\).*no longer type-checks"):
        _run(parse(text), "shard_tensor_parallel{tp=2}")


def test_a_projection_read_by_another_op_is_refused():
    g = parse("""graph @odd(%x: f32[2, 8]) {
  param @model.layers.0.mlp.up_proj.weight: f32[8, 8]
  %y = matmul(%x, @model.layers.0.mlp.up_proj.weight) : f32[2, 8]
  return %y
}
""")
    with pytest.raises(LlmcError, match=r"@model.layers.0.mlp.up_proj.weight reaches 'matmul', "
                                        r"not a linear or embedding: cannot shard it"):
        _run(g, "shard_tensor_parallel{tp=2}")


def test_attention_weights_need_an_attention_op():
    g = parse("""graph @q_only(%x: f32[2, 8]) {
  param @model.layers.0.self_attn.q_proj.weight: f32[8, 8]
  %y = linear(%x, @model.layers.0.self_attn.q_proj.weight) : f32[2, 8]
  return %y
}
""")
    with pytest.raises(LlmcError, match="no attention op to read the head counts from"):
        _run(g, "shard_tensor_parallel{tp=2}")


def test_sequence_parallel_needs_a_sequence_axis():
    g = parse("""graph @tokens(%ids: i64[tokens]) {
  param @model.embed_tokens.weight: f32[16, 8]
  %e = embedding(%ids, @model.embed_tokens.weight) : f32[tokens, 8]
  return %e
}
""")
    with pytest.raises(LlmcError, match=r"sequence_parallel: reduce_scatter along the sequence "
                                        r"needs \[batch, seq, hidden\]"):
        _run(g, "shard_tensor_parallel{tp=2,sequence_parallel=true}")


def _expected_per_rank(m, tp: int) -> int:
    """From the weights: norms whole, k/v split over min(kv heads, tp), the rest over tp."""
    kv = m.cfg.num_kv_heads
    total = 0
    for name, w in m.weights.items():
        if name.endswith(("layernorm.weight", "norm.weight")):
            total += w.nbytes
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            total += w.nbytes // min(kv, tp)
        else:
            total += w.nbytes // tp
    return total


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_per_rank_parameter_bytes(tp):
    m = model("llama_gqa", "cache")
    g, recs, ctx = shard(m, tp)
    whole = sum(w.nbytes for w in m.weights.values())
    assert param_bytes(g) == param_bytes(m.graph) == whole
    assert per_rank_param_bytes(m.graph) == whole
    assert per_rank_param_bytes(g) == _expected_per_rank(m, tp)
    assert ctx.model["tensor_parallel"] == {
        "tp": tp, "sequence_parallel": False, "param_bytes": whole,
        "param_bytes_per_rank": _expected_per_rank(m, tp)}


def test_match_count_is_the_parameters_sharded():
    m = model("llama_gqa", "cache")
    _, recs, _ = shard(m, 2)
    layers = m.cfg.num_layers
    assert (recs[0].matched, recs[0].expected) == (7 * layers + 2, 7 * layers + 2)
    m = model("baichuan2_7b", "inference")
    _, recs, _ = shard(m, 2)
    assert recs[0].matched == 5 * m.cfg.num_layers + 2


def test_the_sharded_graph_prints_and_parses_back():
    m = model("llama_gqa", "inference", "paddle-fused")
    g, _, _ = shard(m, 8)
    assert print_graph(copy(g)) == print_graph(g)
    counts = g.op_counts()
    assert counts["rank"] == 1 and counts["all_reduce"] == 2 * m.cfg.num_layers + 1
    assert counts["grad_all_reduce"] == 2 * m.cfg.num_layers + 1
    assert np.all([op.attrs["nranks"] == 8 for op in g.ops if "nranks" in op.attrs])


def test_stored_itemsize_overrides_the_graph_dtype():
    m = model("llama_gqa", "cache")
    g, _, _ = shard(m, 2)
    half = {n: 2 for n in g.params}
    assert param_bytes(g, half) * 2 == param_bytes(g)
    assert per_rank_param_bytes(g, half) * 2 == per_rank_param_bytes(g)


def test_a_sharded_graph_is_not_sharded_again():
    m = model("llama_gqa", "cache")
    g, _, _ = shard(m, 2)
    with pytest.raises(LlmcError, match="already sharded"):
        _run(g, "shard_tensor_parallel{tp=2}")


def test_after_fusion_the_cached_attention_caches_are_split_too():
    """The pass is meant to run first, but a fused cache form shards as well."""
    from shard_tp_tools import cache_feeds, rank_feeds

    from llmc.passes.pipelines import pipeline_for
    from llmc.runtime.reference import run
    from llmc.runtime.simulate import simulate

    m = model("llama_gqa", "cache")
    api.run_pipeline(m.graph, pipeline_for("cpu"))
    assert "cached_attention" in m.graph.op_counts()
    g, _, _ = shard(m, 4)
    feeds = cache_feeds(m.graph, m.cfg)
    want = run(m.graph, feeds, m.weights)
    got = simulate(g, rank_feeds(m.graph, g, feeds, 4), m.weights)
    for outs in got:
        np.testing.assert_allclose(outs[0], want[0], rtol=1e-5, atol=1e-5)


def test_a_projection_with_a_bias_is_refused():
    """A row-parallel bias would be summed tp times: refused, not silently wrong."""
    g = parse("""graph @biased(%x: f32[2, 8]) {
  param @model.layers.0.mlp.down_proj.weight: f32[8, 8]
  param @model.layers.0.mlp.down_proj.bias: f32[8]
  %y = linear(%x, @model.layers.0.mlp.down_proj.weight, @model.layers.0.mlp.down_proj.bias) : f32[2, 8]
  return %y
}
""")
    with pytest.raises(LlmcError, match=r"`%y = linear\(.*` has a bias, which this pass does "
                                        r"not shard"):
        _run(g, "shard_tensor_parallel{tp=2}")


def test_the_pass_log_note():
    from llmc.passes.shard_tp import param_bytes_note

    m = model("llama_gqa", "cache")
    _, _, ctx = shard(m, 2)
    whole = ctx.model["tensor_parallel"]["param_bytes"]
    mine = ctx.model["tensor_parallel"]["param_bytes_per_rank"]
    assert param_bytes_note(ctx) == (
        f"NOTE: [shard_tensor_parallel] tp=2: parameters {whole:,} bytes whole, "
        f"{mine:,} bytes per rank ({mine / whole:.1%})")
    assert param_bytes_note(PassContext()) is None
