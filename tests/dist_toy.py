"""A toy language model written by hand whole and sharded for 2 tensor-parallel ranks
(column/row-parallel MLP, vocab-parallel embedding and head, a kv-like projection
replicated on both ranks, sequence-parallel and MC2 variants), for the Paddle distributed
runtime's tests (tests/test_dist_*.py and the launched tests/dist_worker.py)."""

import numpy as np

from llmc.compiler.text import parse

V, H, F = 16, 8, 12

PARAMS = f"""  param @embed: f32[{V}, {H}]
  param @norm: f32[{H}]
  param @q: f32[{H}, {H}]
  param @kv: f32[4, {H}]
  param @o: f32[{H}, {H}]
  param @up: f32[{F}, {H}]
  param @down: f32[{H}, {F}]
  param @head: f32[{V}, {H}]
"""
HEAD = "graph @toy(%input_ids: i64[batch, seq], %position_ids: i64[batch, seq]) {\n" + PARAMS

FULL = HEAD + f"""  %e = embedding(%input_ids, @embed) : f32[batch, seq, {H}]
  %n = mul(%e, @norm) : f32[batch, seq, {H}]
  %q = linear(%n, @q) : f32[batch, seq, {H}]
  %k = linear(%n, @kv) : f32[batch, seq, 4]
  %kk = concat(%k, %k) {{axis = -1}} : f32[batch, seq, {H}]
  %qk = mul(%q, %kk) : f32[batch, seq, {H}]
  %att = linear(%qk, @o) : f32[batch, seq, {H}]
  %h1 = add(%e, %att) : f32[batch, seq, {H}]
  %u = linear(%h1, @up) : f32[batch, seq, {F}]
  %a = silu(%u) : f32[batch, seq, {F}]
  %d = linear(%a, @down) : f32[batch, seq, {H}]
  %h = add(%h1, %d) : f32[batch, seq, {H}]
  %logits = linear(%h, @head) : f32[batch, seq, {V}]
  return %logits
}}
"""

SHARDS = f"""  %r = rank() {{nranks = 2}} : i64[]
  %embed_r = shard(@embed, %r) {{axis = 0, parts = 2}} : f32[{V // 2}, {H}]
  %q_r = shard(@q, %r) {{axis = 0, parts = 2}} : f32[{H // 2}, {H}]
  %kv_r = shard(@kv, %r) {{axis = 0, parts = 1, replicas = 2}} : f32[4, {H}]
  %o_r = shard(@o, %r) {{axis = 1, parts = 2}} : f32[{H}, {H // 2}]
  %up_r = shard(@up, %r) {{axis = 0, parts = 2}} : f32[{F // 2}, {H}]
  %down_r = shard(@down, %r) {{axis = 1, parts = 2}} : f32[{H}, {F // 2}]
  %head_r = shard(@head, %r) {{axis = 0, parts = 2}} : f32[{V // 2}, {H}]
  %pe = parallel_embedding(%input_ids, %embed_r, %r) : f32[batch, seq, {H}]
"""


def _attention_mlp(x: str, seq: str, mc2: bool, sp: bool) -> str:
    """q (column) * kv (replicated) → o (row), residual, up (column) → down (row)."""
    h2 = H // 2
    if sp:
        gather = f"  %xg = all_gather(%{x}) {{axis = 1, nranks = 2}} : f32[batch, seq, {H}]\n"
        cin = "xg"
    else:
        gather = f"  %xg = grad_all_reduce(%{x}) {{nranks = 2}} : f32[batch, seq, {H}]\n"
        cin = "xg"
    out = gather + f"""  %q = linear(%{cin}, %q_r) : f32[batch, seq, {h2}]
  %k = linear(%{cin}, %kv_r) : f32[batch, seq, 4]
  %qk = mul(%q, %k) : f32[batch, seq, {h2}]
"""
    reduce_kind = ("matmul_reduce_scatter" if sp else "matmul_all_reduce") if mc2 else None
    collective = "reduce_scatter" if sp else "all_reduce"
    axis = "axis = 1, " if sp else ""
    if reduce_kind:
        out += f"  %att = {reduce_kind}(%qk, %o_r) {{{axis}nranks = 2}} : f32[batch, {seq}, {H}]\n"
    else:
        out += f"""  %attp = linear(%qk, %o_r) : f32[batch, seq, {H}]
  %att = {collective}(%attp) {{{axis}nranks = 2}} : f32[batch, {seq}, {H}]
"""
    out += f"  %h1 = add(%{x}, %att) : f32[batch, {seq}, {H}]\n"
    if sp and mc2:
        out += f"  %u = all_gather_matmul(%h1, %up_r) {{axis = 1, nranks = 2}} : f32[batch, seq, {F // 2}]\n"
    elif sp:
        out += f"""  %h1g = all_gather(%h1) {{axis = 1, nranks = 2}} : f32[batch, seq, {H}]
  %u = linear(%h1g, %up_r) : f32[batch, seq, {F // 2}]
"""
    else:
        out += f"""  %h1g = grad_all_reduce(%h1) {{nranks = 2}} : f32[batch, seq, {H}]
  %u = linear(%h1g, %up_r) : f32[batch, seq, {F // 2}]
"""
    out += f"  %a = silu(%u) : f32[batch, seq, {F // 2}]\n"
    if reduce_kind:
        out += f"  %d = {reduce_kind}(%a, %down_r) {{{axis}nranks = 2}} : f32[batch, {seq}, {H}]\n"
    else:
        out += f"""  %dp = linear(%a, %down_r) : f32[batch, seq, {H}]
  %d = {collective}(%dp) {{{axis}nranks = 2}} : f32[batch, {seq}, {H}]
"""
    return out + f"  %h = add(%h1, %d) : f32[batch, {seq}, {H}]\n"


def sharded(sp: bool = False, mc2: bool = False) -> str:
    """The toy sharded for 2 ranks; `sp`: sequence parallel (activations between the
    parallel regions split along seq); `mc2`: the matmul+collective pairs fused."""
    seq = "seq_div2" if sp else "seq"
    first = (f"  %e = reduce_scatter(%pe) {{axis = 1, nranks = 2}} : f32[batch, {seq}, {H}]\n"
             if sp else f"  %e = all_reduce(%pe) {{nranks = 2}} : f32[batch, seq, {H}]\n")
    body = first + f"  %n = mul(%e, @norm) : f32[batch, {seq}, {H}]\n"
    body += _attention_mlp("n", seq, mc2, sp).replace("%h1 = add(%n,", "%h1 = add(%e,")
    last = (f"  %hg = all_gather(%h) {{axis = 1, nranks = 2}} : f32[batch, seq, {H}]\n" if sp
            else f"  %hg = grad_all_reduce(%h) {{nranks = 2}} : f32[batch, seq, {H}]\n")
    last += f"""  %lp = linear(%hg, %head_r) : f32[batch, seq, {V // 2}]
  %logits = all_gather(%lp) {{axis = 2, nranks = 2}} : f32[batch, seq, {V}]
  return %logits
}}
"""
    return HEAD + SHARDS + body + last


def graphs():
    """name → graph: the whole toy and its sharded variants."""
    out = {"full": parse(FULL)}
    for sp in (False, True):
        for mc2 in (False, True):
            out[("sp" if sp else "tp") + ("_mc2" if mc2 else "")] = parse(sharded(sp, mc2))
    return out


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the toy."""
    rng = np.random.default_rng(seed)
    shapes = {"embed": (V, H), "norm": (H,), "q": (H, H), "kv": (4, H), "o": (H, H),
              "up": (F, H), "down": (H, F), "head": (V, H)}
    return {n: (rng.standard_normal(s) * 0.5).astype(np.float32) for n, s in shapes.items()}


def batch(seed: int, rows: int = 4, seq: int = 6) -> dict[str, np.ndarray]:
    """Token ids and labels (a masked prefix on the first row)."""
    ids = np.random.default_rng(seed).integers(0, V, (rows, seq))
    labels = ids.copy()
    labels[0, :2] = -100
    return {"input_ids": ids, "labels": labels}
