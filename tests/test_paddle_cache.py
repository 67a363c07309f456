"""Generation on the Paddle runtime: the cache form (uncompiled and compiled for per-op
targets) driven through the engine contract gives the reference interpreter's greedy
tokens, and its logits within 1e-4, with prompts of unequal lengths decoded together."""

import numpy as np
import pytest
from cache_tools import cache_graph, greedy, weights_for

pytest.importorskip("paddle")

from llmc.compiler.errors import LlmcError  # noqa: E402
from llmc.runtime.cache_lm import ReferenceCacheLM  # noqa: E402
from llmc.runtime.paddle import PaddleCacheLM  # noqa: E402

PROMPTS = [[5, 9, 2, 11, 3], [7, 1], [4, 4, 8]]


@pytest.mark.parametrize("target", [None, "cpu", "mlu370"])
@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_paddle_cache_generation_matches_reference(arch, target):
    _, g, _ = cache_graph(arch, target)
    w = weights_for(arch, g)
    want_toks, want_steps = greedy(ReferenceCacheLM(g, w), PROMPTS, 4)
    lm = PaddleCacheLM(g, w)
    got_toks, got_steps = greedy(lm, PROMPTS, 4)
    assert got_toks == want_toks
    for a, b in zip(got_steps, want_steps):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    if target is not None:
        assert "cached_attention" in lm.program.kernels.report()


def test_full_form_graph_is_refused():
    from test_paddle_models import full_graph

    _, g, w = full_graph("llama")
    with pytest.raises(LlmcError, match="is not a cache-form graph"):
        PaddleCacheLM(g, w)


def test_cache_overflow_is_an_error():
    _, g, _ = cache_graph("llama")
    lm = PaddleCacheLM(g, weights_for("llama", g))
    cache = lm.new_cache(1, 4)
    with pytest.raises(LlmcError, match="overflow the 4-slot cache"):
        lm.forward(cache, [0], np.asarray([[1, 2, 3]]), np.asarray([2]))
