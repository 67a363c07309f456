"""Parity with HF transformers (torch CPU, fp32) on tiny random checkpoints, for every
architecture and both graph forms; greedy generation equals transformers `generate`.

Baichuan has no transformers class: Baichuan2-7B is checked against LlamaForCausalLM on
the equivalent split weights (lm_head rows normalised), Baichuan2-13B against the torch
re-implementation in reference_models.py, and its ALiBi slopes against BLOOM's
`build_alibi_tensor`. Error measure: max|ours - ref| / max|ref| over the logits.

TOL holds the order of the README's parity table (2.9e-7 .. 8.2e-7), not just "close".
Which Baichuan uses ALiBi is the fixture's architecture (`arch=`), not read from its config.
"""

import json
import shutil

from pathlib import Path

import numpy as np
import pytest
import reference_models as rm

from llmc.compiler.ops import get_op
from llmc.compiler.ops.nn import alibi_slopes
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full, build_inference
from llmc.frontends.loader import open_checkpoint
from llmc.runtime.generate import Generator, full_logits, generate

TOL = 5e-6  # README: every architecture within 8.2e-7, Paddle checkpoints within 5.6e-7
PROMPT_LEN, SEQ = 4, 9


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    made = {}

    def get(arch, fmt="hf"):
        if (arch, fmt) not in made:
            out = tmp_path_factory.mktemp(f"{arch}-{fmt}")
            made[arch, fmt] = fixtures.write_fixture(out, arch, fmt)
        return made[arch, fmt]

    return get


def token_ids(seed, shape, vocab=256):
    return np.random.default_rng(seed).integers(3, vocab, size=shape)


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def inference_logits(ck, ids, prompt_len=PROMPT_LEN):
    """Logits of the inference form at positions prompt_len-1 .. seq-1: one prefill of the
    first prompt_len tokens, then teacher-forced decode steps. [batch, steps, vocab]."""
    gen = Generator(build_inference(ck.config, ck.naming, block_size=4), ck.weights)
    s, logits = gen.prefill([list(r[:prompt_len]) for r in ids], ids.shape[1] - prompt_len)
    out = [logits]
    for p in range(prompt_len, ids.shape[1]):
        out.append(gen.decode(s, ids[:, p]))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_full_form_matches_transformers(arch, checkpoint_dir):
    d = checkpoint_dir(arch)
    ck = open_checkpoint(d)
    ids = token_ids(1, (2, SEQ))
    ours = full_logits(build_full(ck.config, ck.naming), ck.weights, ids)
    err = rel_err(ours, rm.hf_logits(d, ids, arch=arch))
    assert err <= TOL, f"{arch}: full-form max relative error {err:.2e}"


@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_inference_form_matches_transformers(arch, checkpoint_dir):
    d = checkpoint_dir(arch)
    ck = open_checkpoint(d)
    ids = token_ids(2, (2, SEQ))
    ref = rm.hf_logits(d, ids, arch=arch)[:, PROMPT_LEN - 1:]
    err = rel_err(inference_logits(ck, ids), ref)
    assert err <= TOL, f"{arch}: inference-form max relative error {err:.2e}"


@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_greedy_generation_matches_transformers_generate(arch, checkpoint_dir):
    """32 new tokens for prompts of different lengths decoded together in one batch;
    transformers generates each prompt on its own (no padding involved)."""
    d = checkpoint_dir(arch)
    ck = open_checkpoint(d)
    prompts = [list(token_ids(3, 7)), list(token_ids(4, 3))]
    ours = generate(build_inference(ck.config, ck.naming), ck.weights, prompts, 32)
    for p, got in zip(prompts, ours):
        want = rm.hf_generate(d, [p], 32, stop_at_eos=False, arch=arch)[0, len(p):].tolist()
        assert got == want
    assert len(set(map(tuple, ours))) == 2  # the two sequences did not share state


def test_generation_stops_at_eos_like_transformers(checkpoint_dir):
    d = checkpoint_dir("llama")
    ck = open_checkpoint(d)
    prompt = list(token_ids(5, 5))
    free = rm.hf_generate(d, [prompt], 12, stop_at_eos=False)[0, len(prompt):].tolist()
    eos = free[6]  # pretend the 7th generated token is the end-of-sequence token
    ours = generate(build_inference(ck.config, ck.naming), ck.weights, [prompt, prompt], 12, eos)
    assert ours[0] == ours[1] == free[: free.index(eos) + 1]


def test_stream_calls_back_each_token(checkpoint_dir):
    ck = open_checkpoint(checkpoint_dir("llama_gqa"))
    seen = []
    out = generate(build_inference(ck.config, ck.naming), ck.weights, [[5, 6, 7], [9]], 4,
                   on_token=lambda i, t: seen.append((i, t)))
    assert sorted(seen) == sorted((i, t) for i, toks in enumerate(out) for t in toks)
    assert len(seen) == 8


@pytest.mark.parametrize("form", ["full", "inference"])
def test_baichuan2_7b_matches_llama_for_causal_lm(form, checkpoint_dir, tmp_path):
    """Baichuan2-7B == transformers LlamaForCausalLM on split W_pack, normalised lm_head."""
    d = checkpoint_dir("baichuan2_7b")
    llama_dir = rm.baichuan7b_as_llama(d, tmp_path / "as_llama")
    ck = open_checkpoint(d)
    assert ck.config.qkv_packed and ck.config.norm_head
    ids = token_ids(6, (2, SEQ))
    ref = rm.load_hf_model(llama_dir)  # a real transformers Llama, not the torch re-implementation
    assert type(ref).__name__ == "LlamaForCausalLM"
    want = rm.hf_logits(llama_dir, ids)
    if form == "full":
        got = full_logits(build_full(ck.config, ck.naming), ck.weights, ids)
    else:
        got, want = inference_logits(ck, ids), want[:, PROMPT_LEN - 1:]
    assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("heads", [40, 6, 8])
def test_alibi_slopes_and_bias_match_transformers_bloom(heads):
    seq = 11
    bloom = rm.bloom_alibi_bias(heads, seq)  # slope[h] * key position, from transformers
    np.testing.assert_allclose(alibi_slopes(heads), bloom[:, 1], rtol=1e-6)
    np.testing.assert_allclose(alibi_slopes(heads), rm.baichuan_alibi_slopes(heads), rtol=1e-6)
    op = get_op("alibi_bias")
    ours = op.run([np.arange(seq, dtype=np.int64)[None]], {"num_heads": heads})[0]
    np.testing.assert_allclose(ours.reshape(heads, seq), bloom, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama_gqa", "llama_rope_scaling", "baichuan2_13b"])
@pytest.mark.parametrize("fmt", ["paddle", "paddleformers"])
def test_paddle_checkpoint_gives_the_hf_logits(arch, fmt, checkpoint_dir):
    """The same weights saved by PaddleNLP ([in, out], llama.* names) or PaddleFormers."""
    ck = open_checkpoint(checkpoint_dir(arch, fmt))
    ids = token_ids(7, (2, SEQ))
    want = rm.hf_logits(checkpoint_dir(arch), ids, arch=arch)
    full = full_logits(build_full(ck.config, ck.naming), ck.weights, ids)
    assert rel_err(full, want) <= TOL
    assert rel_err(inference_logits(ck, ids), want[:, PROMPT_LEN - 1:]) <= TOL


def small_hidden_states_copy(model_dir, out_dir, scale=1e-2):
    """The checkpoint with the embedding and the residual-branch outputs (o_proj, down_proj)
    scaled by `scale`: hidden states of ~1e-2, where mean(x^2) ~1e-4 is only 10x rms eps and
    its placement (sqrt(ms + eps) vs sqrt(ms) + eps) moves the logits by percents."""
    weights = fixtures.read_safetensors_dir(model_dir)
    for name in weights:
        if name.endswith(("embed_tokens.weight", "o_proj.weight", "down_proj.weight")):
            weights[name] = weights[name] * np.float32(scale)
    fixtures.write_safetensors(out_dir, weights, metadata={"format": "pt"})
    shutil.copy(Path(model_dir) / "config.json", Path(out_dir) / "config.json")
    return Path(out_dir)


@pytest.mark.parametrize("arch", ["llama", "llama_gqa", "baichuan2_7b", "baichuan2_13b"])
def test_small_hidden_states_match_transformers(arch, checkpoint_dir, tmp_path):
    d = small_hidden_states_copy(checkpoint_dir(arch), tmp_path / "small")
    ck = open_checkpoint(d)
    ids = token_ids(8, (2, SEQ))
    want = rm.hf_logits(d, ids, arch=arch)
    h = np.asarray(ck.weights["model.embed_tokens.weight"])[ids]
    assert 5e-5 < np.mean(h * h) < 2e-4  # hidden states of ~1e-2 enter the first norm
    assert rel_err(full_logits(build_full(ck.config, ck.naming), ck.weights, ids), want) <= TOL
    assert rel_err(inference_logits(ck, ids), want[:, PROMPT_LEN - 1:]) <= TOL


def test_reference_takes_alibi_from_the_fixture_arch(checkpoint_dir):
    d13, d7 = checkpoint_dir("baichuan2_13b"), checkpoint_dir("baichuan2_7b")
    with pytest.raises(ValueError, match="pass arch="):
        rm.ReferenceDecoder.from_dir(d13)
    assert rm.ReferenceDecoder.from_dir(d13, "baichuan2_13b").spec.alibi
    assert not rm.ReferenceDecoder.from_dir(d7, "baichuan2_7b").spec.alibi
    cfg = json.loads((d13 / "config.json").read_text())
    assert "alibi" not in cfg and cfg["model_type"] == "baichuan"  # nothing in it says ALiBi
