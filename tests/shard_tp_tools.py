"""Shared by the shard_tensor_parallel tests: the tiny fixtures' graphs in every form and
checkpoint layout, the pass run on a copy, and N simulated ranks fed and compared with
the unsharded graph (KV caches split per rank as the sharded graph declares them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from llmc import api
from llmc.compile import build_graph, model_facts
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import parse, print_graph
from llmc.compiler.verifier import verify
from llmc.frontends.config import parse_config
from llmc.frontends.fixture_configs import paddle_config
from llmc.frontends.fixture_weights import paddlenlp_weights
from llmc.frontends.fixtures import random_weights, tiny_config
from llmc.frontends.naming import PADDLE, naming_for
from llmc.runtime.generate import Generator
from llmc.runtime.reference import run
from llmc.runtime.simulate import simulate

ARCHES = ["llama", "llama_gqa", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b",
          "chinese_llama2"]
LAYOUTS = ["hf", "paddle", "paddle-fused"]


@dataclass
class Model:
    """A tiny fixture's config, graph of one form and weights."""

    cfg: object
    graph: Graph
    weights: dict
    form: str


def model(arch: str, form: str, layout: str = "hf", tied: bool = False) -> Model:
    """The fixture `arch` in `form` ('full' keeps every position's logits) and `layout`:
    'hf' (HF names, [out, in]), 'paddle' (PaddleNLP llama.*, [in, out]) or 'paddle-fused'
    (PaddleNLP qkv_proj)."""
    if layout == "hf":
        cfg = parse_config(tiny_config(arch, tied=tied))
        naming, w = naming_for(cfg.source_format), random_weights(arch, seed=0, tied=tied)
    else:
        fused = layout == "paddle-fused"
        cfg = parse_config(paddle_config(arch, fuse_qkv=fused, tied=tied))
        naming = dataclasses.replace(PADDLE, fused_qkv=fused)
        w = paddlenlp_weights(arch, seed=0, fuse_qkv=fused, tied=tied)
    g = build_graph(cfg, naming, form, last_token_only=False)
    return Model(cfg, g, {k: w[k] for k in g.params}, form)


def copy(g: Graph) -> Graph:
    return parse(print_graph(g))


def shard(m: Model, tp: int, pipeline: str = "", **options) -> tuple[Graph, list, PassContext]:
    """A copy of m.graph through shard_tensor_parallel{tp, options} then `pipeline`."""
    opts = ",".join([f"tp={tp}"] + [f"{k}={str(v).lower()}" for k, v in options.items()])
    spec = f"shard_tensor_parallel{{{opts}}}" + (f",{pipeline}" if pipeline else "")
    g = copy(m.graph)
    ctx = PassContext(model=model_facts(m.cfg, m.form))
    records = api.run_pipeline(g, spec, ctx=ctx)
    verify(g)
    return g, records, ctx


def rank_feeds(full: Graph, sharded: Graph, feeds: dict, tp: int) -> list[dict]:
    """Each rank's inputs: a KV cache the sharded graph declares with fewer heads (axis 1)
    gets that rank's heads (the same slice for the ranks that replicate a kv head)."""
    per_rank = []
    want = {v.name: v.type.shape for v in sharded.inputs}
    for r in range(tp):
        mine = dict(feeds)
        for v in full.inputs:
            whole, local = v.type.shape, want[v.name]
            if whole != local:
                parts = whole[1] // local[1]
                piece = r // (tp // parts)
                mine[v.name] = feeds[v.name][:, piece * local[1]:(piece + 1) * local[1]]
        per_rank.append(mine)
    return per_rank


def gather_caches(full: Graph, outs: list[list[np.ndarray]], tp: int) -> list[np.ndarray]:
    """The whole caches from the ranks' present outputs: each distinct kv slice once."""
    caches = []
    for i in range(1, len(outs[0])):
        whole = full.outputs[i].type.shape[1]
        local = outs[0][i].shape[1]
        step = tp // (whole // local)
        caches.append(np.concatenate([outs[r][i] for r in range(0, tp, step)], axis=1))
    return caches


def assert_ranks_equal(full_outs, rank_outs, full: Graph, tp: int, rtol=1e-5, atol=1e-5):
    """Every rank's logits equal the unsharded ones; the gathered caches too."""
    for r, outs in enumerate(rank_outs):
        np.testing.assert_allclose(outs[0], full_outs[0], rtol=rtol, atol=atol,
                                   err_msg=f"rank {r} logits")
    for i, cache in enumerate(gather_caches(full, rank_outs, tp), 1):
        np.testing.assert_allclose(cache, full_outs[i], rtol=rtol, atol=atol,
                                   err_msg=f"cache output {i}")


def full_feeds(cfg, batch: int = 2, seq: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, cfg.vocab_size, (batch, seq)),
            "position_ids": np.tile(np.arange(seq), (batch, 1))}


def cache_feeds(g: Graph, cfg, past_lens=(0, 3), seq: int = 5, max_len: int = 16,
                seed: int = 0) -> dict:
    """Cache-form inputs: random ids, random (whole) past buffers."""
    rng = np.random.default_rng(seed)
    b = len(past_lens)
    feeds = {"input_ids": rng.integers(0, cfg.vocab_size, (b, seq)),
             "past_lens": np.asarray(past_lens, np.int64)}
    for v in g.inputs:
        if v.name.startswith(("past_key_", "past_value_")):
            shape = (b, v.type.shape[1], max_len, v.type.shape[3])
            feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check_form(m: Model, tp: int, feeds: dict, pipeline: str = "", **options) -> Graph:
    """The sharded graph (then `pipeline`) on tp simulated ranks equals the unsharded one."""
    g, _, _ = shard(m, tp, pipeline, **options)
    want = run(m.graph, feeds, m.weights)
    got = simulate(g, rank_feeds(m.graph, g, feeds, tp), m.weights)
    assert len(got) == tp
    assert_ranks_equal(want, got, m.graph, tp)
    return g


class SimCacheLM:
    """The engine contract (new_cache / forward) of runtime/cache_lm.py over tp simulated
    ranks of a sharded cache-form graph, each holding its own KV heads."""

    def __init__(self, full: Graph, sharded: Graph, weights: dict, tp: int):
        self.full, self.graph, self.weights, self.tp = full, sharded, weights, tp
        self.pasts = [v.name for v in full.inputs if v.name.startswith(("past_key_", "past_value_"))]
        self.shape = {v.name: v.type.shape for v in full.inputs}

    def new_cache(self, batch: int, max_len: int) -> dict:
        return {n: np.zeros((batch, self.shape[n][1], max_len, self.shape[n][3]), np.float32)
                for n in self.pasts}

    def forward(self, cache: dict, rows, input_ids, past_lens) -> np.ndarray:
        idx = np.asarray(list(rows), np.int64)
        feeds = {"input_ids": np.asarray(input_ids, np.int64),
                 "past_lens": np.asarray(past_lens, np.int64),
                 **{n: buf[idx] for n, buf in cache.items()}}
        outs = simulate(self.graph, rank_feeds(self.full, self.graph, feeds, self.tp),
                        self.weights)
        for r in range(1, self.tp):
            np.testing.assert_array_equal(outs[r][0], outs[0][0])
        for name, whole in zip(self.pasts, gather_caches(self.full, outs, self.tp)):
            cache[name][idx] = whole
        return outs[0][0]


class SimGenerator(Generator):
    """runtime/generate.Generator over tp simulated ranks of a sharded inference form: the
    session holds whole caches, split per rank for each step and gathered back."""

    def __init__(self, full: Graph, sharded: Graph, weights: dict, tp: int):
        super().__init__(full, weights)
        self.sharded, self.tp = sharded, tp

    def step(self, s, ids, this_time, enc, dec) -> np.ndarray:
        feeds = {"input_ids": ids, "seq_lens_this_time": np.asarray(this_time, np.int32),
                 "seq_lens_encoder": np.asarray(enc, np.int32),
                 "seq_lens_decoder": np.asarray(dec, np.int32), "block_tables": s.tables,
                 **s.caches}
        outs = simulate(self.sharded, rank_feeds(self.graph, self.sharded, feeds, self.tp),
                        self.weights)
        for r in range(1, self.tp):
            np.testing.assert_array_equal(outs[r][0], outs[0][0])
        for v, arr in zip(self.cache_inputs, gather_caches(self.graph, outs, self.tp)):
            s.caches[v.name] = arr
        return outs[0][0]
