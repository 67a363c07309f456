"""Every target on every architecture: compiled logits equal the uncompiled graph's
(fp32 tolerance) and greedy generations are identical, on the reference interpreter, in
the form each target compiles (ascend910b: inference; the per-op targets: cache), through
the generation engine; and the per-op targets' full form (`--form full`) stays correct."""

import numpy as np
import pytest
from cache_tools import greedy
from golden import check_generation_numerics
from llmc.compiler.errors import LlmcError
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import parse, print_graph
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import ARCHES as FIXTURE_ARCHES
from llmc.frontends.fixtures import random_weights as fixture_weights
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import ASCEND_VENDOR_PASSES, TARGETS, get_target, pipeline_for
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.engine import Engine, GenerationParams
from llmc.runtime.paged_lm import PagedLM
from llmc.runtime.recompute import RecomputeLM
from llmc.runtime.reference import run

from llmc import api
from llmc.compile import build_graph, model_facts

# every architecture the fixtures write, Chinese-LLaMA-2 (vocab 55296) included
ARCHES = list(FIXTURE_ARCHES)
PROMPTS = [[1, 17, 42, 9, 200], [3, 4]]


def compiled(arch: str, target: str):
    cfg = parse_config(tiny_config(arch))
    form = get_target(target).form
    before = build_graph(cfg, naming_for(cfg.source_format), form)
    after = parse(print_graph(before))
    recs = api.run_pipeline(
        after, pipeline_for(target), ctx=PassContext(model=model_facts(cfg, form))
    )
    return cfg, before, after, recs


def hf_weights(arch: str, g):
    w = fixture_weights(arch, seed=0)
    return {k: w[k] for k in g.params}


def full_greedy(g, w, prompt, n):
    ids, out = list(prompt), []
    for _ in range(n):
        pos = np.arange(len(ids), dtype=np.int64)[None]
        logits = run(g, {"input_ids": np.asarray([ids]), "position_ids": pos}, w)[0]
        out.append(int(np.argmax(logits[0, -1])))
        ids.append(out[-1])
    return out, logits


def model_for(form: str, g, w):
    """The engine's CausalLM over a graph of `form` on the reference interpreter."""
    if form == "inference":
        return PagedLM(g, w)
    if form == "cache":
        return ReferenceCacheLM(g, w)
    return RecomputeLM.from_graph(g, w)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("target", list(TARGETS))
def test_compiled_equals_uncompiled(arch, target):
    _, before, after, recs = compiled(arch, target)
    assert not [r.name for r in recs if r.mismatch]
    assert len(after) < len(before)
    w = hf_weights(arch, before)
    if get_target(target).form == "inference":
        gb, ga, _, _ = check_generation_numerics(before, after, w, PROMPTS, 4, tol=1e-4)
        assert ga.generate(PROMPTS, 5) == gb.generate(PROMPTS, 5)
    else:
        assert get_target(target).form == "cache"
        tb, lb = greedy(ReferenceCacheLM(before, w), PROMPTS, 4)
        ta, la = greedy(ReferenceCacheLM(after, w), PROMPTS, 4)
        assert ta == tb
        for a, b in zip(la, lb):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", list(TARGETS))
def test_engine_batch_and_eos_match_uncompiled(target):
    """Through the engine: a mixed-length batch, then eos ending one row early, give the
    same tokens compiled and uncompiled."""
    _, before, after, _ = compiled("llama_gqa", target)
    w = hf_weights("llama_gqa", before)
    form = get_target(target).form
    run = [Engine(model_for(form, g, w)) for g in (before, after)]
    free = [e.generate(PROMPTS, GenerationParams(max_new_tokens=5)).tokens for e in run]
    assert free[0] == free[1]
    eos = free[0][1][1]
    params = GenerationParams(max_new_tokens=5, eos_token_id=[eos, 10_000])
    stopped = [e.generate(PROMPTS, params) for e in run]
    assert stopped[0].tokens == stopped[1].tokens
    assert stopped[1].rows[1].finish_reason == "eos" and stopped[1].tokens[1][-1] == eos


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
@pytest.mark.parametrize("target", ["cpu", "mlu370"])
def test_full_form_still_compiles_for_per_op_targets(arch, target):
    """`--form full` (training / parity graphs) stays a per-op target's option."""
    cfg = parse_config(tiny_config(arch))
    before = build_graph(cfg, naming_for(cfg.source_format), "full")
    after = parse(print_graph(before))
    recs = api.run_pipeline(after, pipeline_for(target),
                            ctx=PassContext(model=model_facts(cfg, "full")))
    assert not [r.name for r in recs if r.mismatch] and "attention" in after.op_counts()
    w = hf_weights(arch, before)
    for p in PROMPTS:
        tb, lb = full_greedy(before, w, p, 4)
        ta, la = full_greedy(after, w, p, 4)
        assert ta == tb
        np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "baichuan2_13b"])
def test_every_target_generates_the_same_tokens(arch):
    outs = {}
    for target in TARGETS:
        _, before, after, _ = compiled(arch, target)
        lm = model_for(get_target(target).form, after, hf_weights(arch, before))
        outs[target] = Engine(lm).generate([PROMPTS[0]], GenerationParams(max_new_tokens=4)).tokens[0]
    assert len({tuple(v) for v in outs.values()}) == 1, outs


def test_per_op_targets_compile_the_cache_form():
    assert {t: TARGETS[t].form for t in TARGETS} == {
        "ascend910b": "inference", "mlu370": "cache", "bi150": "cache", "cuda": "cache",
        "cpu": "cache"}


def test_ascend_pipeline_runs_the_vendor_passes_in_order():
    _, _, after, recs = compiled("llama_gqa", "ascend910b")
    assert [r.name for r in recs][:9] == list(ASCEND_VENDOR_PASSES)
    counts = {r.name: r.matched for r in recs}
    assert counts["llama_fuse_attention_layer_begin"] == 1
    assert counts["llama_fuse_attention_layer_end"] == 1
    assert counts["llama_fuse_attention_layer"] == 1  # 3 layers: L - 2
    kinds = after.op_counts()
    assert kinds["fused_blha_layer"] == 3 and kinds["lm_head"] == 1 and kinds["remove_padding"] == 1
    assert "block_multihead_attention" not in kinds and "fused_rms_norm" not in kinds


def test_every_supported_architecture_is_covered():
    assert {"llama", "llama_gqa", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b",
            "chinese_llama2"} <= set(ARCHES)


def test_unknown_target_lists_known_ones():
    with pytest.raises(LlmcError, match="known targets: ascend910b, mlu370, bi150, cuda, cpu"):
        pipeline_for("tpu")


def test_every_target_pipeline_parses():
    from llmc.compiler.passmanager import parse_pipeline

    for t in TARGETS:
        assert parse_pipeline(pipeline_for(t))
