"""Shared by the cache-form and ONNX tests: compiled cache-form graphs of the tiny fixtures,
and a greedy driver over the engine contract (new_cache / forward) that prefills each
prompt on its own and decodes the live rows together, as runtime/engine.py does."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from llmc import api
from llmc.compile import build_graph, model_facts
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import parse, print_graph
from llmc.frontends.config import parse_config
from llmc.frontends.fixtures import random_weights as fixture_weights
from llmc.frontends.fixtures import tiny_config
from llmc.frontends.naming import naming_for
from llmc.passes.pipelines import pipeline_for

PER_OP_TARGETS = ["cpu", "cuda", "mlu370", "bi150"]


@lru_cache(maxsize=None)
def _cache_graph_text(arch: str, target: str | None) -> tuple[str, list]:
    cfg = parse_config(tiny_config(arch))
    g = build_graph(cfg, naming_for(cfg.source_format), "cache")
    recs = []
    if target is not None:
        recs = api.run_pipeline(g, pipeline_for(target),
                                ctx=PassContext(model=model_facts(cfg, "cache")))
    return print_graph(g), recs


def cache_graph(arch: str, target: str | None = None):
    """(config, graph, pass records): the tiny fixture's cache form, compiled for `target`
    (None: uncompiled). A fresh graph each call."""
    text, recs = _cache_graph_text(arch, target)
    return parse_config(tiny_config(arch)), parse(text), recs


def weights_for(arch: str, g) -> dict[str, np.ndarray]:
    """The fixture's seed-0 weights of g's parameters (the same as its checkpoint's)."""
    w = fixture_weights(arch, seed=0)
    return {k: w[k] for k in g.params}


def greedy(model, prompts: list[list[int]], new_tokens: int, eos: int | None = None,
           max_len: int | None = None) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy tokens per prompt, and the logits of every step ([rows, vocab] for the rows
    that ran). Finished rows drop out of the decode batch."""
    n = len(prompts)
    cache = model.new_cache(n, max_len or max(map(len, prompts)) + new_tokens)
    first = [model.forward(cache, [i], np.asarray([p]), np.array([0]))[0]
             for i, p in enumerate(prompts)]
    steps = [np.stack(first)]
    toks = [[int(np.argmax(lg))] for lg in first]
    lens = [len(p) for p in prompts]
    for _ in range(new_tokens - 1):
        live = [i for i in range(n) if eos is None or toks[i][-1] != eos]
        if not live:
            break
        ids = np.asarray([[toks[i][-1]] for i in live])
        logits = model.forward(cache, live, ids, np.asarray([lens[i] for i in live]))
        steps.append(logits)
        for i, lg in zip(live, logits):
            toks[i].append(int(np.argmax(lg)))
            lens[i] += 1
    return toks, steps
