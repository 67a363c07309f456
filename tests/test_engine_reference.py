"""The engine over real model graphs on the reference interpreter: RecomputeLM on the full
form generates what the paged inference-form Generator generates (greedy, mixed-length
batch, eos), for RoPE, GQA and ALiBi; and its sampling is batch-independent there too."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.compiler.errors import LlmcError
from llmc.frontends.config import parse_config
from llmc.frontends.llama import build_full, build_inference
from llmc.frontends.naming import HF
from llmc.runtime.engine import GenerationParams, generate
from llmc.runtime.generate import Generator, full_logits
from llmc.runtime.recompute import RecomputeLM
from llmc.runtime.reference import random_weights

BASE = dict(architectures=["LlamaForCausalLM"], hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, vocab_size=64, rms_norm_eps=1e-5,
            max_position_embeddings=64)
ARCHS = {
    "llama": {},
    "llama_gqa": dict(num_key_value_heads=2),
    "baichuan2_13b": dict(architectures=["BaichuanForCausalLM"], hidden_size=48,
                          num_attention_heads=6, max_position_embeddings=None,
                          model_max_length=64),
}
PROMPTS = [[5, 9, 13, 2, 40, 33], [7], [21, 22, 23]]


def model_for(arch):
    cfg = parse_config({k: v for k, v in {**BASE, **ARCHS[arch]}.items() if v is not None})
    full = build_full(cfg, HF)
    weights = random_weights(full, seed=0, scale=0.3)
    for name in weights:
        if name.endswith("norm.weight"):
            weights[name] = 1.0 + 0.1 * weights[name]
    return cfg, full, weights


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_matches_the_paged_generator(arch):
    cfg, full, weights = model_for(arch)
    paged = Generator(build_inference(cfg, HF, block_size=4), weights)
    want = paged.generate(PROMPTS, 8)
    model = RecomputeLM.from_graph(full, weights, max_positions=64)
    assert generate(model, PROMPTS, GenerationParams(max_new_tokens=8)).tokens == want
    eos = want[0][3]
    with_eos = paged.generate(PROMPTS, 8, eos_token_id=eos)
    res = generate(model, PROMPTS, GenerationParams(max_new_tokens=8, eos_token_id=[eos]))
    assert res.tokens == with_eos


def test_sampling_on_a_real_graph_is_batch_independent():
    _, full, weights = model_for("llama")
    model = RecomputeLM.from_graph(full, weights)
    params = GenerationParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=4)
    batched = generate(model, PROMPTS, params).tokens
    assert batched == [generate(model, [p], params).tokens[0] for p in PROMPTS]
    assert all(0 <= t < 64 for row in batched for t in row)


def test_recompute_refuses_other_graphs():
    cfg, _, _ = model_for("llama")
    with pytest.raises(LlmcError, match="not a full-form graph"):
        RecomputeLM.from_graph(build_inference(cfg, HF), {})


def test_recompute_logits_are_the_last_positions():
    _, full, weights = model_for("llama")
    model = RecomputeLM.from_graph(full, weights)
    cache = model.new_cache(2, 16)
    ids = np.asarray([[3, 4, 5]], np.int64)
    got = model.forward(cache, [1], ids, np.asarray([0]))
    np.testing.assert_allclose(got[0], full_logits(full, weights, ids)[0, -1], rtol=1e-6)
    step = model.forward(cache, [1], np.asarray([[6]], np.int64), np.asarray([3]))
    np.testing.assert_allclose(step[0], full_logits(full, weights, [[3, 4, 5, 6]])[0, -1],
                               rtol=1e-6)


def test_a_last_token_only_graph_generates_the_same():
    from llmc.compile import build_graph

    cfg, full, weights = model_for("llama_gqa")
    last_only = build_graph(cfg, HF, "full", last_token_only=True)
    params = GenerationParams(max_new_tokens=5)
    want = generate(RecomputeLM.from_graph(full, weights), PROMPTS, params).tokens
    assert generate(RecomputeLM.from_graph(last_only, weights), PROMPTS, params).tokens == want
