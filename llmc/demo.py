"""The built-in demo: a tiny llama-shaped graph through the generic pipeline and the interpreter."""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np

from llmc.compiler.builder import Builder
from llmc.compiler.ir import Graph

GENERIC_PIPELINE = "canonicalize,cse,dce"


def llama_shaped_graph(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                       ffn: int = 128, vocab: int = 256, eps: float = 1e-5) -> Graph:
    """A llama-style decoder built with the Builder API, with the redundancy a naive
    exporter leaves behind (duplicate position casts, reshape chains, identity casts)
    so that the generic passes have real work."""
    d = hidden // heads
    b = Builder("llama_demo")
    ids = b.input("input_ids", "i64", ["batch", "seq"])
    pos = b.input("position_ids", "i64", ["batch", "seq"])
    h = b.embedding(ids, b.param("model.embed_tokens.weight", "f32", [vocab, hidden]), name="h")
    for i in range(layers):
        p = f"model.layers.{i}."
        n = b.rms_norm(h, b.param(p + "input_layernorm.weight", "f32", [hidden]), epsilon=eps)
        q = b.linear(n, b.param(p + "self_attn.q_proj.weight", "f32", [hidden, hidden]))
        k = b.linear(n, b.param(p + "self_attn.k_proj.weight", "f32", [kv_heads * d, hidden]))
        v = b.linear(n, b.param(p + "self_attn.v_proj.weight", "f32", [kv_heads * d, hidden]))
        q = b.reshape(b.reshape(q, shape=[0, 0, heads * d]), shape=[0, 0, heads, d])
        k = b.reshape(k, shape=[0, 0, kv_heads, d])
        v = b.reshape(v, shape=[0, 0, kv_heads, d])
        q = b.rope(q, b.cast(b.cast(pos, dtype="i64"), dtype="i32"))  # exporters repeat casts
        k = b.rope(k, b.cast(b.cast(pos, dtype="i64"), dtype="i32"))
        a = b.attention(q, k, v)
        a = b.reshape(a, shape=[0, 0, hidden])
        o = b.linear(a, b.param(p + "self_attn.o_proj.weight", "f32", [hidden, hidden]))
        h = b.add(h, o)
        n2 = b.rms_norm(h, b.param(p + "post_attention_layernorm.weight", "f32", [hidden]),
                        epsilon=eps)
        g = b.linear(n2, b.param(p + "mlp.gate_proj.weight", "f32", [ffn, hidden]))
        u = b.linear(n2, b.param(p + "mlp.up_proj.weight", "f32", [ffn, hidden]))
        m = b.linear(b.swiglu(g, u), b.param(p + "mlp.down_proj.weight", "f32", [hidden, ffn]))
        h = b.add(h, m)
        b.neg(h)  # an unused value (dead code)
    n = b.rms_norm(h, b.param("model.norm.weight", "f32", [hidden]), epsilon=eps)
    logits = b.linear(n, b.param("lm_head.weight", "f32", [vocab, hidden]), name="logits")
    b.output(logits)
    return b.graph


def main(layers: int = 2, json_out: bool = False, log: Callable[[str], None] = print) -> dict:
    """Build, optimise and run the demo graph; returns a summary dict."""
    from llmc import api
    from llmc.runtime.reference import random_inputs, random_weights

    g = llama_shaped_graph(layers=layers)
    before = api.parse(api.print_graph(g))
    log(f"built llama-shaped graph: {layers} layers, {len(g)} ops, {len(g.params)} params")
    t0 = time.perf_counter()
    records = api.run_pipeline(g, GENERIC_PIPELINE, log=None if json_out else log)
    ms = (time.perf_counter() - t0) * 1e3
    dims = {"batch": 2, "seq": 7}
    ins = random_inputs(before, dims, int_high={"input_ids": 256})
    ins["position_ids"] = np.broadcast_to(np.arange(7), (2, 7)).astype(np.int64).copy()
    w = random_weights(before, scale=0.2)
    want = api.run_reference(before, ins, w)[0]
    got = api.run_reference(g, ins, w)[0]
    err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
    summary = {"layers": layers, "ops_before": len(before), "ops_after": len(g),
               "pipeline": GENERIC_PIPELINE, "pipeline_ms": round(ms, 3),
               "logits_shape": list(got.shape), "max_rel_err_vs_unoptimised": err,
               "greedy_next_tokens": got[:, -1].argmax(-1).tolist(),
               "passes": [r.__dict__ for r in records]}
    if json_out:
        log(json.dumps(summary, indent=2))
    else:
        log(f"reference interpreter: logits {list(got.shape)}, max relative error vs the "
            f"unoptimised graph {err:.2e}, next tokens {summary['greedy_next_tokens']}")
    return summary
