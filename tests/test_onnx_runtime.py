"""The ONNX Runtime backend end to end: each per-op target's compiled cache-form graph on
ORT (IOBinding, KV buffers shared between past and present) against the reference
interpreter and HF transformers; export checked by onnx and run by a bare session."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cache_tools import PER_OP_TARGETS, cache_graph, greedy, weights_for

from llmc.compiler.errors import LlmcError
from llmc.frontends import fixtures
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.onnx.export import DATA_FILE, export
from llmc.runtime.onnx.session import OrtCausalLM

ARCHES = ["llama", "llama_gqa", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b"]
PROMPTS = [[1, 17, 42, 9, 200], [3, 4], [7, 8, 9, 10, 11, 12, 13], [5]]


def ort_model(arch, target="cpu", tmp=None):
    cfg, g, _ = cache_graph(arch, target)
    w = weights_for(arch, g)
    m = OrtCausalLM.from_graph(g, w, max_positions=cfg.max_position_embeddings, target=target,
                               workdir=tmp)
    return m, ReferenceCacheLM(g, w), cfg


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("target", PER_OP_TARGETS)
def test_onnxruntime_logits_equal_reference(arch, target):
    """A mixed-length batch: per-row prefill, then batched decode (rows 1 and 3 stop early,
    so later steps run rows that are not contiguous in the cache)."""
    m, ref, _ = ort_model(arch, target)
    got_toks, got = greedy(m, PROMPTS, 6, eos=None)
    want_toks, want = greedy(ref, PROMPTS, 6, eos=None)
    assert got_toks == want_toks
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    c1, c2 = m.new_cache(4, 16), ref.new_cache(4, 16)
    for c, model in ((c1, m), (c2, ref)):
        for i, p in enumerate(PROMPTS):
            model.forward(c, [i], np.asarray([p]), np.array([0]))
    lens = np.array([len(PROMPTS[0]), len(PROMPTS[2])])
    ids = np.array([[11], [12]])
    np.testing.assert_allclose(m.forward(c1, [0, 2], ids, lens), ref.forward(c2, [0, 2], ids, lens),
                               rtol=1e-4, atol=1e-4)
    back = [3, 0]  # out of order: logits follow `rows`
    ids, lens = np.array([[13], [14]]), np.array([len(PROMPTS[3]), len(PROMPTS[0]) + 1])
    np.testing.assert_allclose(m.forward(c1, back, ids, lens), ref.forward(c2, back, ids, lens),
                               rtol=1e-4, atol=1e-4)
    chunk = np.array([[21, 22, 23]])  # several tokens on a non-empty cache (a reused prefix)
    np.testing.assert_allclose(m.forward(c1, [1], chunk, np.array([2])),
                               ref.forward(c2, [1], chunk, np.array([2])), rtol=1e-4, atol=1e-4)


def test_decode_writes_the_cache_in_place():
    m, ref, cfg = ort_model("llama_gqa")
    cache, rcache = m.new_cache(2, 12), ref.new_cache(2, 12)
    ptrs = [buf.data_ptr() for _, _, buf in cache.buffers]
    for c, model in ((cache, m), (rcache, ref)):
        model.forward(c, [0], np.array([[5, 6, 7]]), np.array([0]))
        model.forward(c, [1], np.array([[9, 8]]), np.array([0]))
        model.forward(c, [0, 1], np.array([[1], [2]]), np.array([3, 2]))
    assert [buf.data_ptr() for _, _, buf in cache.buffers] == ptrs
    for (name, _, buf), want in zip(cache.buffers, rcache.buffers.values()):
        have = buf.numpy()
        np.testing.assert_allclose(have[0, :, :4], want[0, :, :4], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(have[1, :, :3], want[1, :, :3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", fixtures.ARCHES)
def test_onnxruntime_greedy_matches_transformers(arch, tmp_path):
    """32 greedy tokens, prompts of different lengths decoded together, = HF generate."""
    import reference_models as rm

    d = fixtures.write_fixture(tmp_path / arch, arch)
    m, _, _ = ort_model(arch)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(3, 256, n)) for n in (7, 3, 11, 1)]
    ours, _ = greedy(m, prompts, 32)
    for p, got in zip(prompts, ours):
        assert got == rm.hf_generate(d, [p], 32, stop_at_eos=False, arch=arch)[0, len(p):].tolist()


def test_eos_row_stops_and_others_go_on():
    m, ref, _ = ort_model("llama")
    free, _ = greedy(ref, PROMPTS[:2], 10)
    eos = free[0][4]
    got, _ = greedy(m, PROMPTS[:2], 10, eos=eos)
    assert got[0] == free[0][:5]
    assert got[1] == (free[1][: free[1].index(eos) + 1] if eos in free[1] else free[1])


def test_export_runs_in_a_bare_session(tmp_path):
    """model.onnx + one data file: the full checker passes, standard and com.microsoft
    domains only, each weight stored once; plain InferenceSession.run (no llmc, no
    IOBinding, presents fed back as pasts) gives llmc's logits."""
    cfg, g, _ = cache_graph("baichuan2_13b", "cpu")
    w = weights_for("baichuan2_13b", g)
    path = export(g, w, tmp_path / "out", max_positions=cfg.max_position_embeddings)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    assert {n.domain for n in model.graph.node} <= {"", "com.microsoft"}
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    spans = sorted((int(e["offset"]), int(e["length"])) for e in
                   ({x.key: x.value for x in t.external_data} for t in external))
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))  # no tensor twice
    # embeddings, lm_head, and per layer the merged [Q|K|V], o_proj, [gate|up], down
    assert len(external) == 2 + 4 * cfg.num_layers
    assert sum(n for _, n in spans) == sum(int(np.prod(t.dims)) * 4 for t in external)
    assert spans[-1][0] + spans[-1][1] == (tmp_path / "out" / DATA_FILE).stat().st_size
    assert path.stat().st_size < 100_000

    bare = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = ReferenceCacheLM(g, w)
    names = [i.name for i in bare.get_inputs() if i.name.startswith("past_k")
             or i.name.startswith("past_v")]
    pasts = {n: np.zeros((1, cfg.num_kv_heads, 16, cfg.head_dim), np.float32) for n in names}
    rcache = ref.new_cache(1, 16)
    for ids, past in (([[4, 5, 6, 7]], 0), ([[8]], 4), ([[9]], 5)):
        feeds = {"input_ids": np.array(ids), "past_lens": np.array([past]), **pasts}
        outs = bare.run(None, feeds)
        pasts = dict(zip(names, outs[1:]))
        want = ref.forward(rcache, [0], np.array(ids), np.array([past]))
        np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)


def test_cuda_provider_missing_is_a_clear_error(tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    cfg, g, _ = cache_graph("llama", "cuda")
    path = export(g, weights_for("llama", g), tmp_path, check=False)
    with pytest.raises(LlmcError, match="--provider cuda: .* no CUDAExecutionProvider; install "
                                        "onnxruntime-gpu"):
        OrtCausalLM(path, provider="cuda")


def test_full_form_model_is_refused(tmp_path):
    from llmc.compile import build_graph
    from llmc.frontends.naming import naming_for

    cfg, _, _ = cache_graph("llama")
    full = build_graph(cfg, naming_for(cfg.source_format), "full")
    path = export(full, weights_for("llama", full), tmp_path, check=False)
    with pytest.raises(LlmcError, match="not a cache-form model"):
        OrtCausalLM(path)


def test_grouped_heads_with_folded_rotary():
    """GQA (4 query heads on 2 kv heads) with head_dim 16: rope runs inside
    GroupQueryAttention on the packed projection; logits = reference."""
    from llmc import api
    from llmc.compile import build_graph, model_facts
    from llmc.compiler.passmanager import PassContext
    from llmc.frontends.config import parse_config
    from llmc.frontends.fixtures import tiny_config
    from llmc.frontends.naming import naming_for
    from llmc.passes.pipelines import pipeline_for
    from llmc.runtime.reference import random_weights

    cfg = parse_config({**tiny_config("llama_gqa"), "hidden_size": 64, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "rope_theta": 500000.0})
    g = build_graph(cfg, naming_for(cfg.source_format), "cache")
    api.run_pipeline(g, pipeline_for("cpu"), ctx=PassContext(model=model_facts(cfg, "cache")))
    w = random_weights(g, scale=0.2)
    m = OrtCausalLM.from_graph(g, w, max_positions=64)
    types = [n.op_type for n in onnx.load(str(m.path)).graph.node]
    assert "RotaryEmbedding" not in types
    got_toks, got = greedy(m, PROMPTS, 8)
    want_toks, want = greedy(ReferenceCacheLM(g, w), PROMPTS, 8)
    assert got_toks == want_toks
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
