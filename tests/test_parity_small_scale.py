"""HF parity where the hidden states entering every RMSNorm are ~1e-2 in size.

The other parity fixtures use N(0,1) embeddings, where `sqrt(ms + eps)` and `sqrt(ms) + eps`
differ by ~5e-6 and a misplaced eps passes every test. Here `hidden_scale=1e-2` (embedding,
o_proj and down_proj scaled) keeps the residual stream at mean square ~1e-4, comparable to
eps = 1e-5, so the two placements differ by ~5% per norm. Every graph llmc runs is checked
against transformers: the decomposed full form, the inference form (the `rms_norm` kernel),
each target's compiled graph in its own form (fused norm kernels) and a per-op target's
full form.
"""

import numpy as np
import pytest
import reference_models as rm
import torch

from llmc.compile import compile_model
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full, build_inference
from llmc.frontends.loader import open_checkpoint
from llmc.passes.pipelines import TARGETS
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.generate import Generator, full_logits

SCALE = 1e-2
TOL = 1e-5
IDS = np.random.default_rng(21).integers(3, 256, size=(2, 9))
PROMPT_LEN = 4


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    made = {}

    def get(arch, fmt="hf"):
        if (arch, fmt) not in made:
            out = tmp_path_factory.mktemp(f"small-{arch}-{fmt}")
            made[arch, fmt] = fixtures.write_fixture(out, arch, fmt, hidden_scale=SCALE)
        return made[arch, fmt]

    return get


def rel_err(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def steps(gen: Generator, ids: np.ndarray) -> np.ndarray:
    """Prefill PROMPT_LEN tokens then teacher-forced decode: logits [batch, steps, vocab]."""
    s, first = gen.prefill([list(r[:PROMPT_LEN]) for r in ids], ids.shape[1] - PROMPT_LEN)
    return np.stack([first] + [gen.decode(s, ids[:, p])
                               for p in range(PROMPT_LEN, ids.shape[1])], axis=1)


def cache_steps(lm, ids: np.ndarray) -> np.ndarray:
    """The same on a cache-form graph: prefill each row, then decode the rows together."""
    cache = lm.new_cache(len(ids), ids.shape[1])
    rows = list(range(len(ids)))
    first = np.concatenate([lm.forward(cache, [i], ids[i:i + 1, :PROMPT_LEN], np.zeros(1, np.int64))
                            for i in rows])
    return np.stack([first] + [lm.forward(cache, rows, ids[:, p:p + 1],
                                          np.full(len(rows), p, np.int64))
                               for p in range(PROMPT_LEN, ids.shape[1])], axis=1)


def test_hidden_states_entering_the_norms_are_small(small):
    model = rm.load_hf_model(small("llama"))
    with torch.no_grad():
        hidden = model(torch.as_tensor(IDS), output_hidden_states=True).hidden_states
    eps = model.config.rms_norm_eps
    # every layer's input (the last entry is already normalised by the final norm)
    mean_squares = [float(h.pow(2).mean(-1).max()) for h in hidden[:-1]]
    assert all(0 < ms < 30 * eps for ms in mean_squares), mean_squares


def test_eps_placement_changes_the_transformers_logits(small, monkeypatch):
    """The oracle itself tells the two placements apart by far more than TOL."""
    from transformers.models.llama import modeling_llama

    d = small("llama")
    want = rm.hf_logits(d, IDS)

    def eps_outside(self, x):
        ms = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x / (ms.sqrt() + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", eps_outside)
    assert rel_err(rm.hf_logits(d, IDS), want) > 100 * TOL


@pytest.mark.parametrize("arch", ["llama", "llama_gqa"])
def test_full_form_matches_transformers(arch, small):
    d = small(arch)
    ck = open_checkpoint(d)
    ours = full_logits(build_full(ck.config, ck.naming), ck.weights, IDS)
    assert rel_err(ours, rm.hf_logits(d, IDS)) <= TOL


@pytest.mark.parametrize("arch", ["llama", "llama_gqa"])
def test_inference_form_matches_transformers(arch, small):
    d = small(arch)
    ck = open_checkpoint(d)
    gen = Generator(build_inference(ck.config, ck.naming, block_size=4), ck.weights)
    want = rm.hf_logits(d, IDS)[:, PROMPT_LEN - 1:]
    assert rel_err(steps(gen, IDS), want) <= TOL


@pytest.mark.parametrize("target", list(TARGETS))
def test_compiled_target_matches_transformers(target, small):
    d = small("llama_gqa")
    c = compile_model(d, target)
    ck = open_checkpoint(d)
    want = rm.hf_logits(d, IDS)
    if c.form == "inference":
        got = steps(Generator(c.graph, ck.weights), IDS)
    else:
        assert c.form == "cache"
        got = cache_steps(ReferenceCacheLM(c.graph, ck.weights), IDS)
    assert rel_err(got, want[:, PROMPT_LEN - 1:]) <= TOL, target


def test_full_form_of_a_per_op_target_matches_transformers(small):
    d = small("llama_gqa")
    c = compile_model(d, "cpu", form="full")
    got = full_logits(c.graph, open_checkpoint(d).weights, IDS)
    assert rel_err(got, rm.hf_logits(d, IDS)[:, -1:]) <= TOL


def test_paddle_checkpoint_of_the_same_weights(small):
    ck = open_checkpoint(small("llama_gqa", "paddle"))
    gen = Generator(build_inference(ck.config, ck.naming, block_size=4), ck.weights)
    want = rm.hf_logits(small("llama_gqa"), IDS)[:, PROMPT_LEN - 1:]
    assert rel_err(steps(gen, IDS), want) <= TOL
