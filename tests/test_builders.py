"""Graph builders: both forms for every architecture and layout verify, round-trip,
have the structure docs/graph-forms.md promises, and agree numerically."""

import time

import numpy as np
import pytest

from llmc.compiler.errors import LlmcError
from llmc.compiler.text import parse, print_graph
from llmc.compiler.verifier import verify
from llmc.frontends.config import parse_config
from llmc.frontends.llama import build_full, build_inference
from llmc.frontends.naming import HF, PADDLE
from llmc.runtime.generate import Generator, full_logits
from llmc.runtime.reference import random_weights

BASE = dict(architectures=["LlamaForCausalLM"], hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, vocab_size=64, rms_norm_eps=1e-5,
            max_position_embeddings=64)
ARCHS = {
    "llama": {},
    "llama_gqa": dict(num_key_value_heads=2),
    "llama_rope_scaling": dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=500.0),
    "baichuan2_7b": dict(architectures=["BaichuanForCausalLM"]),
    "baichuan2_13b": dict(architectures=["BaichuanForCausalLM"], hidden_size=48,
                          num_attention_heads=6, max_position_embeddings=None,
                          model_max_length=64),
    "paddlenlp_alibi": dict(alibi=True, num_attention_heads=8),
    "tied": dict(tie_word_embeddings=True),
}
NAMINGS = {"hf": HF, "paddle": PADDLE}


def config(arch):
    d = {**BASE, **ARCHS[arch]}
    return parse_config({k: v for k, v in d.items() if v is not None})


def test_configs_cover_the_architectures():
    assert config("baichuan2_13b").position == "alibi" and config("baichuan2_13b").qkv_packed
    assert config("baichuan2_7b").position == "rope" and config("baichuan2_7b").norm_head
    assert config("llama_rope_scaling").rope_scaling_factor == 2.0
    paddle_alibi = config("paddlenlp_alibi")
    assert paddle_alibi.position == "alibi" and not paddle_alibi.qkv_packed


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("form", ["full", "fused", "inference"])
def test_graphs_verify_and_round_trip(arch, naming, form):
    g = build(arch, naming, form)
    verify(g)
    text = print_graph(g)
    assert print_graph(parse(text)) == text


def build(arch, naming, form, **kw):
    cfg, names = config(arch), NAMINGS[naming]
    if form == "inference":
        return build_inference(cfg, names, **kw)
    return build_full(cfg, names, decomposed=form == "full")


@pytest.mark.parametrize("arch", ARCHS)
def test_full_form_structure(arch):
    cfg = config(arch)
    layers = cfg.num_layers
    c = build(arch, "hf", "full").op_counts()
    per_layer_linears = 5 if cfg.qkv_packed else 7
    assert c["linear"] == per_layer_linears * layers + 1
    assert c["rsqrt"] == 2 * layers + 1 and c["softmax"] == layers
    assert c.get("split", 0) == (layers if cfg.qkv_packed else 0)
    assert c.get("l2_normalize", 0) == int(cfg.norm_head)
    assert c.get("alibi_bias", 0) == int(cfg.position == "alibi")
    rope_tables = cfg.position == "rope"
    assert (c.get("cos", 0), c.get("sin", 0)) == ((1, 1) if rope_tables else (0, 0))
    assert c.get("neg", 0) == (2 * layers if rope_tables else 0)  # rotate_half of q and k
    gqa = cfg.num_kv_heads != cfg.num_heads
    rotate_half = 2 * layers if rope_tables else 0
    assert c.get("concat", 0) == int(rope_tables) + rotate_half + (2 * layers if gqa else 0)
    assert c["where"] == 1  # one mask for every layer
    fused = build(arch, "hf", "fused").op_counts()
    assert fused["rms_norm"] == 2 * layers + 1 and fused["attention"] == layers
    assert fused.get("rope", 0) == (2 * layers if rope_tables else 0)
    assert "softmax" not in fused and "rsqrt" not in fused


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_form_structure(arch):
    cfg = config(arch)
    layers = cfg.num_layers
    g = build(arch, "hf", "inference")
    c = g.op_counts()
    assert c["block_multihead_attention"] == layers and c["fused_rms_norm"] == 2 * layers
    assert c["fused_bias_act"] == layers and c["linear"] == 4 * layers + 1
    for once in ("get_padding_offset", "blha_get_max_len", "fused_bias_residual_layernorm",
                 "rebuild_padding", "rms_norm", "embedding"):
        assert c[once] == 1, once
    assert len(g.outputs) == 1 + 2 * layers and len(g.inputs) == 5 + 2 * layers
    attn = [op for op in g.ops if op.kind == "block_multihead_attention"]
    assert all(op.attrs["use_alibi"] == (cfg.position == "alibi") for op in attn)
    assert all(op.attrs["rope_scaling_factor"] == cfg.rope_scaling_factor for op in attn)
    first = next(op for op in g.ops if op.kind == "fused_rms_norm")
    assert len(first.inputs) == 2  # layer 0 has no residual yet
    assert g.outputs[1] is attn[0].outputs[1] and g.outputs[2] is attn[0].outputs[2]


def hf_state_shapes(arch):
    """Parameter shapes of the matching transformers model (built on the meta device)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = config(arch)
    hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                     intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                     tie_word_embeddings=cfg.tie_word_embeddings)
    with torch.device("meta"):
        model = LlamaForCausalLM(hc)
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight")
    return {k: tuple(v.shape) for k, v in state.items()}


def param_shapes(g):
    return {n: p.type.shape for n, p in g.params.items()}


@pytest.mark.parametrize("arch", ["llama", "llama_gqa", "tied"])
@pytest.mark.parametrize("form", ["full", "inference"])
def test_params_match_transformers_state_dict(arch, form):
    assert param_shapes(build(arch, "hf", form)) == hf_state_shapes(arch)


def test_baichuan_params_use_w_pack():
    want = hf_state_shapes("baichuan2_7b")
    for i in range(2):
        p = f"model.layers.{i}.self_attn."
        want[p + "W_pack.weight"] = (96, 32)
        for n in "qkv":
            del want[f"{p}{n}_proj.weight"]
    assert param_shapes(build("baichuan2_7b", "hf", "full")) == want
    assert param_shapes(build("baichuan2_7b", "hf", "inference")) == want


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_paddle_layout_is_in_out_and_never_transposed(arch):
    hf, pd = build(arch, "hf", "full"), build(arch, "paddle", "full")
    for name, shape in param_shapes(hf).items():
        pname = "llama." + name[len("model."):] if name.startswith("model.") else name
        want = shape[::-1] if len(shape) == 2 and "embed_tokens" not in name else shape
        assert pd.params[pname].type.shape == want, name
    assert all(not op.attrs["transpose_w"] for op in pd.ops if op.kind == "linear")
    assert all(op.attrs["transpose_w"] for op in hf.ops if op.kind == "linear")


def small_weights(g, seed=0):
    w = random_weights(g, seed=seed, scale=0.3)
    for name in w:
        if name.endswith("norm.weight"):
            w[name] = 1.0 + 0.1 * w[name]
    return w


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forms_agree_numerically(arch, naming):
    """Full decomposed == full fused == inference prefill and teacher-forced decode."""
    full = build(arch, naming, "full")
    w = small_weights(full)
    ids = np.random.default_rng(1).integers(0, 64, size=(2, 6))
    want = full_logits(full, w, ids)
    assert rel_err(full_logits(build(arch, naming, "fused"), w, ids), want) < 1e-5
    gen = Generator(build(arch, naming, "inference", block_size=4), w)
    prompts = [list(ids[0, :4]), list(ids[1, :2])]
    s, logits = gen.prefill(prompts, max_new_tokens=4)
    assert rel_err(logits, want[[0, 1], [3, 1]]) < 1e-5
    for step in range(2):
        logits = gen.decode(s, [ids[0, 4 + step], ids[1, 2 + step]])
        assert rel_err(logits, want[[0, 1], [4 + step, 2 + step]]) < 1e-5


def test_static_block_table_width_is_enforced():
    g = build("llama", "hf", "inference", block_size=4, max_blocks=2)
    assert g.inputs[4].type.shape == ("batch", 2)
    w = small_weights(build("llama", "hf", "full"))
    gen = Generator(g, w)
    gen.generate([[1, 2, 3]], max_new_tokens=5)  # 8 tokens fit in 2 blocks of 4
    with pytest.raises(LlmcError, match="block table holds 2"):
        gen.generate([[1, 2, 3]], max_new_tokens=6)


def test_bad_requests_are_clean_errors():
    with pytest.raises(LlmcError, match="block_size"):
        build("llama", "hf", "inference", block_size=0)
    with pytest.raises(LlmcError, match="not an inference-form graph"):
        Generator(build("llama", "hf", "full"), {})
    with pytest.raises(LlmcError, match="at least one token"):
        Generator(build("llama", "hf", "inference"), {}).generate([[]], 3)


SEED_LLAMA2_13B = dict(architectures=["LlamaForCausalLM"], hidden_size=5120, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, intermediate_size=13824,
                       vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096)


@pytest.mark.parametrize("form", ["full", "inference"])
def test_13b_graph_builds_fast_with_no_weights(form):
    cfg = parse_config(SEED_LLAMA2_13B)
    t0 = time.perf_counter()
    g = build_full(cfg, HF) if form == "full" else build_inference(cfg, HF)
    elapsed = time.perf_counter() - t0
    assert len(g.params) == 40 * 9 + 3
    assert elapsed < 1.0, f"{form} 13B graph took {elapsed:.2f}s"
