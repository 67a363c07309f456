"""runtime/paged_lm.py: the engine drives an inference-form (ascend910b) graph, and its
greedy tokens equal the paged Generator's, for a mixed-length batch, with eos, and across
a kept cache (a chat's next turn)."""

import numpy as np
import pytest
from cache_tools import weights_for

from llmc.compile import build_graph
from llmc.compiler.passmanager import PassContext
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import pipeline_for
from llmc.runtime.engine import Engine, GenerationParams, KVState
from llmc.runtime.generate import Generator
from llmc.runtime.paged_lm import PagedLM

from llmc import api
from llmc.compile import model_facts

PROMPTS = [[1, 17, 42, 9, 200], [3, 4], [7, 8, 9, 10, 11, 12, 13]]


def ascend_graph(arch: str, compiled: bool = True):
    cfg = parse_config(tiny_config(arch))
    g = build_graph(cfg, naming_for(cfg.source_format), "inference")
    if compiled:
        api.run_pipeline(g, pipeline_for("ascend910b"),
                         ctx=PassContext(model=model_facts(cfg, "inference")))
    return g, weights_for(arch, g)


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_engine_greedy_equals_the_paged_generator(arch):
    g, w = ascend_graph(arch)
    want = Generator(g, w).generate(PROMPTS, 6)
    got = Engine(PagedLM(g, w)).generate(PROMPTS, GenerationParams(max_new_tokens=6)).tokens
    assert got == want


def test_eos_ends_one_row_and_the_others_go_on():
    g, w = ascend_graph("llama_gqa")
    free = Generator(g, w).generate(PROMPTS, 6)
    eos = free[1][2]  # row 1's third token
    want = Generator(g, w).generate(PROMPTS, 6, eos)
    res = Engine(PagedLM(g, w)).generate(PROMPTS, GenerationParams(max_new_tokens=6,
                                                                    eos_token_id=eos))
    assert res.tokens == want
    assert res.rows[1].finish_reason == "eos" and len(res.tokens[1]) <= 3


def test_a_kept_cache_continues_token_by_token():
    """A second call whose prompt extends the first prefills only the new part (fed one
    token at a time), with the logits a fresh prefill of the whole prompt gives."""
    g, w = ascend_graph("llama_gqa")
    lm = PagedLM(g, w)
    params = GenerationParams(max_new_tokens=3)
    state = KVState(capacity=32)
    first = Engine(lm).generate([PROMPTS[0]], params, state=state).tokens[0]
    longer = PROMPTS[0] + first + [5, 6]
    again = Engine(lm).generate([longer], params, state=state)
    assert again.timings.prefill_tokens == 3  # the last answer token and the two new ones
    assert again.tokens[0] == Generator(g, w).generate([longer], 3)[0]


def test_vocab_and_positions_come_from_the_graph():
    g, w = ascend_graph("llama", compiled=False)
    lm = PagedLM(g, w)
    cfg = parse_config(tiny_config("llama"))
    assert lm.vocab_size == cfg.vocab_size
    assert lm.max_positions == cfg.max_position_embeddings
    logits = lm.forward(lm.new_cache(2, 8), [1], np.asarray([[1, 2]]), np.asarray([0]))
    assert logits.shape == (1, cfg.vocab_size)
