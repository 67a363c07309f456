"""Per-op fusion passes on real built full-form graphs of every architecture:
match counts equal the model's prediction and outputs are unchanged."""

from pathlib import Path

import numpy as np
import pytest
from golden import check_generation_numerics, check_pass_numerics
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import print_graph
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.llama import build_full
from llmc.frontends.naming import naming_for

from llmc import api

ARCHES = ["llama", "llama_gqa", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b"]
B, S = 2, 5
ANCHOR = {
    "fuse_rms_norm": "rsqrt",
    "fuse_rope": "neg",
    "fuse_attention": "softmax",
    "fuse_swiglu": "silu",
}


def model_ctx(cfg) -> PassContext:
    return PassContext(
        model={"num_layers": cfg.num_layers, "position": cfg.position, "qkv_packed": cfg.qkv_packed}
    )


def full_graph(arch):
    cfg = parse_config(tiny_config(arch))
    return cfg, build_full(cfg, naming_for(cfg.source_format))


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize(
    "pipeline",
    [
        "fuse_rms_norm",
        "fuse_rms_norm{residual=false}",
        "fuse_rope",
        "fuse_attention",
        "fuse_swiglu",
        "fuse_swiglu,fuse_gate_up",
        "fuse_qkv",
    ],
)
def test_fusion_preserves_logits(arch, pipeline):
    cfg, g = full_graph(arch)
    after = check_pass_numerics(
        g,
        pipeline,
        {"batch": B, "seq": S},
        seeds=(0,),
        rtol=1e-4,
        atol=1e-4,
        int_high={"input_ids": cfg.vocab_size},
        ctx=model_ctx(cfg),
    )
    idle = (pipeline == "fuse_rope" and cfg.position == "alibi") or (
        pipeline == "fuse_qkv" and cfg.qkv_packed
    )
    assert (print_graph(after) == print_graph(g)) == idle


@pytest.mark.parametrize("arch", ARCHES)
def test_attention_fusion_holds_for_any_position_ids(arch):
    """The causal mask is by sequence index, so fusing it into attention{causal=true} is
    exact even for position ids that go down along a row (rope / ALiBi read them)."""
    cfg, g = full_graph(arch)
    rng = np.random.default_rng(7)
    pos = np.stack([rng.permutation(np.arange(10, 10 + S)) for _ in range(B)])[:, ::-1].copy()
    assert (np.diff(pos, axis=1) < 0).any(axis=1).all()
    after = check_pass_numerics(
        g,
        "fuse_attention",
        {"batch": B, "seq": S},
        seeds=(0, 1),
        rtol=1e-4,
        atol=1e-4,
        int_high={"input_ids": cfg.vocab_size},
        inputs={"position_ids": pos.astype(np.int64)},
        ctx=model_ctx(cfg),
    )
    attn = [op for op in after.ops if op.kind == "attention"]
    assert len(attn) == cfg.num_layers and all(op.attrs["causal"] for op in attn)
    assert not [op for op in after.ops if op.kind == "softmax"]


@pytest.mark.parametrize("arch", ARCHES)
def test_match_counts_follow_the_model(arch):
    cfg, g = full_graph(arch)
    L = cfg.num_layers
    want = {
        "fuse_rms_norm": 2 * L + 1,
        "fuse_rope": 0 if cfg.position == "alibi" else 2 * L,
        "fuse_attention": L,
        "fuse_swiglu": L,
        "fuse_gate_up": L,
        "fuse_qkv": 0 if cfg.qkv_packed else L,
    }
    recs = api.run_pipeline(g, ",".join(want), ctx=model_ctx(cfg))
    assert {r.name: r.matched for r in recs} == want
    assert not any(r.mismatch for r in recs)
    kinds = g.op_counts()
    assert kinds.get("attention") == L and kinds.get("swiglu") == L
    assert kinds.get("rope", 0) == (0 if cfg.position == "alibi" else 2 * L)


@pytest.mark.parametrize("pass_name,anchor", sorted(ANCHOR.items()))
def test_expected_from_graph_without_model_facts(pass_name, anchor):
    _, g = full_graph("llama_gqa")
    recs = api.run_pipeline(g, pass_name)
    assert recs[0].expected == recs[0].matched > 0


def test_alibi_becomes_attention_bias():
    cfg, g = full_graph("baichuan2_13b")
    api.run_pipeline(g, "fuse_attention,dce")
    attn = [op for op in g.ops if op.kind == "attention"]
    assert len(attn) == cfg.num_layers
    assert all(len(op.inputs) == 4 and op.inputs[3].producer.kind == "alibi_bias" for op in attn)


def test_rope_recovers_theta_and_scaling():
    cfg, g = full_graph("llama_rope_scaling")
    api.run_pipeline(g, "fuse_rope")
    ropes = [op for op in g.ops if op.kind == "rope"]
    assert {(op.attrs["theta"], op.attrs["scaling_factor"]) for op in ropes} == {
        (cfg.rope_theta, 2.0)
    }
    cfg, g = full_graph("llama_gqa")
    api.run_pipeline(g, "fuse_rope")
    assert {op.attrs["theta"] for op in g.ops if op.kind == "rope"} == {500000.0}


def test_rope_refuses_a_perturbed_inv_freq():
    from llmc.frontends.decoder import inv_freq
    from llmc.passes.fuse_rope import theta_of

    good = inv_freq(16, 10000.0).astype(np.float64)
    assert theta_of(good) == 10000.0
    bad = good.copy()
    bad[5] *= 1.001
    assert theta_of(bad) is None


# ---- the vendor passes on the inference form, each alone -----------------------------
VENDOR_ALONE = [
    "remove_residual_in_fused_bias_residual_layernorm",
    "remove_residual_in_rms_norm",
    "remove_blha_get_max_len",
    "llama_fuse_attention_layer_begin",
    "llama_fuse_attention_layer_end",
    "llama_fuse_lm_head",
    "llama_fuse_get_padding_offset",
    # the middle-layer fusion needs its neighbours fused first (else it takes the last layer)
    "llama_fuse_attention_layer_begin,llama_fuse_attention_layer_end,llama_fuse_attention_layer",
]


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
@pytest.mark.parametrize("pipeline", VENDOR_ALONE)
def test_vendor_pass_alone_preserves_generation(arch, pipeline):
    from llmc.compiler.text import parse
    from llmc.frontends.fixtures import random_weights as fixture_weights
    from llmc.frontends.llama import build_inference

    cfg = parse_config(tiny_config(arch))
    before = build_inference(cfg, naming_for(cfg.source_format))
    after = parse(print_graph(before))
    recs = api.run_pipeline(after, pipeline, ctx=model_ctx(cfg))
    assert all(r.matched == r.expected for r in recs) and print_graph(after) != print_graph(before)
    w = fixture_weights(arch)
    w = {k: w[k] for k in before.params}
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    _, _, sb, sa = check_generation_numerics(before, after, w, prompts, 3, tol=1e-5)
    for k in sb.caches:
        np.testing.assert_allclose(sa.caches[k], sb.caches[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pipeline", ["llama_fuse_attention_layer_begin",
                                      "llama_fuse_attention_layer_end"])
def test_layer_fusion_leaves_attention_with_explicit_alibi_slopes_alone(pipeline):
    """fused_blha_layer derives its slopes from num_heads: a block attention given other
    slopes as its operand (those of heads 6..11 of 12 here) must stay unfused."""
    from llmc.compiler.builder import make_op
    from llmc.compiler.ir import DType
    from llmc.compiler.ops.nn import alibi_slopes
    from llmc.compiler.text import parse
    from llmc.frontends.fixtures import random_weights as fixture_weights
    from llmc.frontends.llama import build_inference
    from llmc.passes.shard_tp_comm import set_or_add_operand

    cfg = parse_config(tiny_config("baichuan2_13b"))
    before = build_inference(cfg, naming_for(cfg.source_format))
    attention = [op for op in before.ops if op.kind == "block_multihead_attention"]
    slopes = make_op(before, "constant", [], {
        "value": [float(s) for s in alibi_slopes(2 * cfg.num_heads)[cfg.num_heads:]],
        "shape": (cfg.num_heads,), "dtype": DType.f32})
    before.insert_before(attention[0], [slopes])
    for op in attention:
        set_or_add_operand(op, "alibi_slopes", slopes.output)
    after = parse(print_graph(before))
    assert api.run_pipeline(after, pipeline, ctx=model_ctx(cfg))[0].matched == 0
    assert "fused_blha_layer" not in after.op_counts()
    w = fixture_weights("baichuan2_13b")
    check_generation_numerics(before, after, {k: w[k] for k in before.params},
                              [[5, 6, 7, 8, 9, 10], [11, 12, 13]], 3, tol=1e-5)


def test_lm_head_slice_on_a_generation_graph():
    from llmc.compile import build_graph

    cfg = parse_config(tiny_config("llama"))
    g = build_graph(cfg, naming_for("hf"), "full")
    after = check_pass_numerics(
        g,
        "fuse_rms_norm,fuse_lm_head_slice",
        {"batch": B, "seq": S},
        seeds=(0,),
        rtol=1e-4,
        atol=1e-4,
        int_high={"input_ids": 256},
    )
    lm = [op for op in after.ops if op.kind == "linear" and op.output in after.outputs]
    assert lm and lm[0].output.type.shape[1] == 1


# ---- graphs the fusions must leave alone (review counter-examples) --------------------
FILECHECK = Path(__file__).parent / "filecheck"


def filecheck_case(file: str, name: str) -> str:
    """The graph of one `// -----` case of a FileCheck golden file, by its name."""
    for case in (FILECHECK / file).read_text().split("// -----\n"):
        body = "\n".join(l for l in case.splitlines() if not l.startswith("//")).strip()
        if body.startswith(f"graph @{name}("):
            return body + "\n"
    raise KeyError(name)


@pytest.mark.parametrize(
    "file, name, pipeline, anchor",
    [
        ("fusion/fuse_attention.llmc", "zero_scale", "fuse_attention", "softmax"),
        ("fusion/fuse_attention.llmc", "gqa_wrong_copies", "fuse_attention", "softmax"),
        ("fusion/fuse_rms_norm.llmc", "eps_broadcasts", "fuse_rms_norm", "rsqrt"),
        ("fusion/fuse_rms_norm.llmc", "weight_broadcasts", "fuse_rms_norm", "rsqrt"),
        ("fusion/fuse_rope.llmc", "positions_broadcast_seq", "fuse_rope", "neg"),
        ("fusion/fuse_rope.llmc", "positions_broadcast_batch", "fuse_rope", "neg"),
    ],
)
def test_fusion_leaves_a_lookalike_alone(file, name, pipeline, anchor):
    after = check_pass_numerics(filecheck_case(file, name), pipeline, {"batch": 2, "seq": 3})
    assert after.op_counts().get(anchor, 0) == 1


def test_attention_keeps_an_explicit_scale():
    """A non-default scale constant becomes the op's scale (0 alone is refused)."""
    g = filecheck_case("fusion/fuse_attention.llmc", "zero_scale").replace(
        "%52 = constant() {value = [0.0]}", "%52 = constant() {value = [0.25]}"
    )
    after = check_pass_numerics(g, "fuse_attention,dce", {"batch": 2, "seq": 3})
    assert [op.attrs["scale"] for op in after.ops if op.kind == "attention"] == [0.25]


def test_remove_blha_get_max_len_needs_provably_equal_lengths():
    """enc/dec longer than bsz: the op reads the first len(bsz) entries only."""
    from llmc.compiler.text import parse
    from llmc.runtime.reference import run

    g = parse(filecheck_case("vendor/remove_blha_get_max_len.llmc", "unknown_lengths"))
    ins = {
        "enc": np.array([1, 9], np.int32),
        "dec": np.array([2, 9], np.int32),
        "bsz": np.array([1], np.int32),
    }
    want = run(g, ins)
    assert api.run_pipeline(g, "remove_blha_get_max_len")[0].matched == 0
    assert [int(a[0]) for a in run(g, ins)] == [int(a[0]) for a in want] == [1, 2]


def test_fuse_qkv_counts_only_the_groups_it_fuses():
    """A group whose output sizes are not all known is left alone and not counted."""
    from llmc.compiler.text import parse

    g = parse(
        """graph @g(%x: f32[2, 8], %y: f32[2, 8]) {
  param @wq: f32[n, 8]
  param @wk: f32[4, 8]
  param @wv: f32[4, 8]
  param @aq: f32[8, 8]
  param @ak: f32[4, 8]
  param @av: f32[4, 8]
  %q = linear(%x, @wq) : f32[2, n]
  %k = linear(%x, @wk) : f32[2, 4]
  %v = linear(%x, @wv) : f32[2, 4]
  %q2 = linear(%y, @aq) : f32[2, 8]
  %k2 = linear(%y, @ak) : f32[2, 4]
  %v2 = linear(%y, @av) : f32[2, 4]
  return %q, %k, %v, %q2, %k2, %v2
}
"""
    )
    assert api.run_pipeline(g, "fuse_qkv")[0].matched == 1
    assert g.op_counts() == {"linear": 4, "concat": 1, "split": 1}
