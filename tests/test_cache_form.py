"""The cache graph form on the reference interpreter: equal to the full form, fused by every
per-op target's pipeline (fuse_attention → cached_attention) without changing its numbers,
and greedy-identical to HF transformers."""

import numpy as np
import pytest
from cache_tools import PER_OP_TARGETS, cache_graph, greedy, weights_for

from llmc.compile import build_graph
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType
from llmc.compiler.ops import get_op
from llmc.compiler.verifier import verify
from llmc.frontends import fixtures
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.naming import naming_for
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.reference import ExecutionError, run

ARCHES = ["llama", "llama_gqa", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b"]
PROMPTS = [[1, 17, 42, 9, 200], [3, 4], [7, 8, 9, 10, 11, 12, 13]]


def full_logits_at(cfg, w, ids):
    full = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=False)
    pos = np.arange(len(ids), dtype=np.int64)[None]
    return run(full, {"input_ids": np.asarray([ids]), "position_ids": pos}, w)[0][0]


@pytest.mark.parametrize("arch", ARCHES)
def test_cache_form_equals_full_form(arch):
    """Prefill then teacher-forced decode on the cache form = the full form's logits."""
    cfg, g, _ = cache_graph(arch)
    verify(g)
    w = weights_for(arch, g)
    toks, steps = greedy(ReferenceCacheLM(g, w), PROMPTS, 4)
    for i, p in enumerate(PROMPTS):
        ref = full_logits_at(cfg, w, p + toks[i][:-1])
        got = np.stack([s[i] for s in steps])
        np.testing.assert_allclose(got, ref[len(p) - 1:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("target", PER_OP_TARGETS)
def test_compiled_cache_form_equals_uncompiled(arch, target):
    cfg, before, _ = cache_graph(arch)
    _, after, recs = cache_graph(arch, target)
    verify(after)
    assert not [r.name for r in recs if r.mismatch]
    counts = after.op_counts()
    assert counts["cached_attention"] == cfg.num_layers
    assert "kv_cache_update" not in counts and "softmax" not in counts
    assert counts.get("rope", 0) == (2 * cfg.num_layers if cfg.position == "rope" else 0)
    w = weights_for(arch, before)
    tb, lb = greedy(ReferenceCacheLM(before, w), PROMPTS, 5)
    ta, la = greedy(ReferenceCacheLM(after, w), PROMPTS, 5)
    assert ta == tb
    for a, b in zip(la, lb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_graph_outputs_are_the_presents_in_past_order():
    _, g, _ = cache_graph("llama_gqa", "cpu")
    pasts = [v.name for v in g.inputs if v.name.startswith("past_k") or v.name.startswith("past_v")]
    assert pasts == [f"past_{kv}_{i}" for i in range(3) for kv in ("key", "value")]
    for past, out in zip(pasts, g.outputs[1:]):
        op = out.producer
        assert op.kind == "cached_attention"
        slot = 3 if past.startswith("past_key") else 4
        assert op.inputs[slot].name == past and out is op.outputs[slot - 2]


def test_mask_from_other_lengths_is_not_fused(monkeypatch):
    """The attention rule needs the mask to read the past_lens the buffer writes read."""
    from llmc.frontends import cache_form

    from llmc import api

    orig = cache_form.cache_mask

    def other_lens_mask(b, cfg, pos, past_key):
        lens = b.input("other_lens", DType.i64, ("batch",))
        return orig(b, cfg, cache_form.positions(b, lens, b.graph.inputs[0]), past_key)

    monkeypatch.setattr(cache_form, "cache_mask", other_lens_mask)
    cfg = parse_config(tiny_config("llama"))
    g = cache_form.build_cache(cfg, naming_for(cfg.source_format))
    assert api.run_pipeline(g, "fuse_attention")[0].matched == 0
    monkeypatch.setattr(cache_form, "cache_mask", orig)
    g = cache_form.build_cache(cfg, naming_for(cfg.source_format))
    assert api.run_pipeline(g, "fuse_attention")[0].matched == cfg.num_layers


def test_cache_overflow_is_an_error():
    _, g, _ = cache_graph("llama", "cpu")
    m = ReferenceCacheLM(g, weights_for("llama", g))
    cache = m.new_cache(1, 4)
    with pytest.raises(ExecutionError, match="overflow the 4-slot cache"):
        m.forward(cache, [0], np.array([[1, 2, 3, 4, 5]]), np.array([0]))


def test_not_a_cache_form_graph():
    cfg, _, _ = cache_graph("llama")
    full = build_graph(cfg, naming_for(cfg.source_format), "full")
    with pytest.raises(LlmcError, match="not a cache-form graph"):
        ReferenceCacheLM(full, {})


def test_cached_attention_kernel_is_the_decomposed_chain():
    """The fused op's kernel against attention over only the valid slots, per row."""
    rng = np.random.default_rng(0)
    b, s, hq, hk, d, L = 2, 3, 4, 2, 8, 10
    q, k, v = (rng.standard_normal((b, s, h, d)).astype(np.float32) for h in (hq, hk, hk))
    pk, pv = (rng.standard_normal((b, hk, L, d)).astype(np.float32) for _ in range(2))
    lens = np.array([4, 0])
    out, nk, nv = get_op("cached_attention").run([q, k, v, pk, pv, lens], {"scale": 0.0})
    attn = get_op("attention")
    for r in range(b):
        n = lens[r] + s
        np.testing.assert_array_equal(nk[r, :, lens[r]:n], k[r].transpose(1, 0, 2))
        np.testing.assert_array_equal(nk[r, :, :lens[r]], pk[r, :, :lens[r]])
        np.testing.assert_array_equal(nk[r, :, n:], pk[r, :, n:])
        kk, vv = nk[r:r + 1, :, :n].transpose(0, 2, 1, 3), nv[r:r + 1, :, :n].transpose(0, 2, 1, 3)
        want = attn.run([q[r:r + 1], kk, vv], {"causal": True, "scale": 0.0})[0]
        np.testing.assert_allclose(out[r:r + 1], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_cache_form_greedy_matches_transformers(arch, tmp_path):
    """32 new tokens for prompts of different lengths decoded together (cpu target)."""
    import reference_models as rm

    d = fixtures.write_fixture(tmp_path / arch, arch)
    _, g, _ = cache_graph(arch, "cpu")
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(3, 256, 7)), list(rng.integers(3, 256, 3))]
    ours, _ = greedy(ReferenceCacheLM(g, weights_for(arch, g)), prompts, 32)
    for p, got in zip(prompts, ours):
        assert got == rm.hf_generate(d, [p], 32, stop_at_eos=False, arch=arch)[0, len(p):].tolist()
