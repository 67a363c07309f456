"""What shard_tensor_parallel shards and how: each parameter's role (from its checkpoint
name), the model's head counts (from the attention ops), the size checks, and the
per-rank slice of every sharded weight as `shard` ops on the full checkpoint tensor."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmc.compiler.builder import make_op
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph, Op, Value

PASS = "shard_tensor_parallel"
_PROJ = re.compile(r"(?:^|\.)layers\.\d+\.(?:self_attn|mlp)\.(?P<proj>\w+)\.weight$")
ROLES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "W_pack": "pack", "qkv_proj": "grouped",
         "gate_proj": "gate", "up_proj": "up", "o_proj": "o", "down_proj": "down"}
COLUMN = {"q", "k", "v", "pack", "grouped", "gate", "up", "lm_head"}
ROW = {"o", "down"}
HEAD_ROLES = {"q", "k", "v", "pack", "grouped", "o"}
# ops a weight may pass through on its way to the linear that reads it (packed weights,
# PaddleNLP's grouped qkv reordering, Baichuan's NormHead)
WEIGHT_PREP = {"concat", "reshape", "split", "l2_normalize", "shard", "cast"}


def fail(msg: str) -> LlmcError:
    """A one-line user error of this pass."""
    return LlmcError(f"pass '{PASS}': {msg}")


def role_of(name: str) -> str | None:
    """The role of a parameter by its checkpoint name (frontends/naming.py keeps them):
    q, k, v, pack (Baichuan W_pack), grouped (PaddleNLP qkv_proj), gate, up, o, down,
    embed, lm_head; None for the rest (norms), which every rank holds whole."""
    m = _PROJ.search(name)
    if m:
        return ROLES.get(m["proj"])
    if name.endswith("embed_tokens.weight"):
        return "embed"
    if name == "lm_head.weight" or name.endswith(".lm_head.weight"):
        return "lm_head"
    return None


def roles(g: Graph) -> dict[str, str]:
    """Every used parameter that has a role, by name."""
    return {n: r for n, p in g.params.items() if p.users and (r := role_of(n)) is not None}


@dataclass(frozen=True)
class Heads:
    """Attention head counts of the model and of one rank's share at `tp` ranks."""

    heads: int
    kv_heads: int
    head_dim: int
    tp: int

    @property
    def local(self) -> int:
        return self.heads // self.tp

    @property
    def kv_parts(self) -> int:
        """How many distinct kv-head slices exist (kv heads are replicated past that)."""
        return min(self.kv_heads, self.tp)

    @property
    def kv_replicas(self) -> int:
        return self.tp // self.kv_parts

    @property
    def kv_local(self) -> int:
        return self.kv_heads // self.kv_parts

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def group_local(self) -> int:
        return self.local // self.kv_local

    def check(self) -> None:
        """One-line errors naming the config field that does not divide."""
        if self.heads % self.tp:
            raise fail(f"num_attention_heads ({self.heads}) is not divisible by tp={self.tp}")
        if self.kv_heads % self.tp and self.tp % self.kv_heads:
            raise fail(f"num_key_value_heads ({self.kv_heads}) and tp={self.tp}: neither divides "
                       "the other (kv heads are split, or replicated when tp > kv heads)")


def _sdpa_heads(op: Op) -> tuple[int, int, int] | None:
    """(heads, kv heads, head dim) of HF-eager scores `matmul(q [b,H,s,d], k^T)`, where k is
    [b,KV,s,d] repeated to H heads by unsqueeze/concat/reshape (GQA) or used as is."""
    if op.kind != "matmul" or not op.attrs.get("transpose_b") or op.operand("a").type.rank != 4:
        return None
    _, h, _, d = op.operand("a").type.shape
    k = op.operand("b")
    rep = k.producer
    cat = rep.operand("x").producer if rep is not None and rep.kind == "reshape" else None
    if cat is not None and cat.kind == "concat" and len(set(cat.operands("xs"))) == 1:
        return h, h // len(cat.operands("xs")), d
    return h, k.type.shape[1], d


def _op_heads(op: Op) -> tuple[int, int, int] | None:
    if op.kind == "block_multihead_attention":
        return op.attrs["num_heads"], op.attrs["kv_heads"], op.attrs["head_dim"]
    if op.kind in ("attention", "cached_attention"):
        q, k = op.operand("q").type.shape, op.operand("k").type.shape
        return q[2], k[2], q[3]
    return _sdpa_heads(op)


def find_heads(g: Graph, tp: int) -> Heads | None:
    """The head counts every attention op of the graph agrees on (None: no attention)."""
    found = {h for op in g.ops if (h := _op_heads(op)) is not None}
    if not found:
        return None
    if len(found) > 1 or not all(isinstance(x, int) for x in next(iter(found))):
        raise fail(f"attention ops disagree on (heads, kv heads, head dim): {sorted(map(str, found))}")
    h, kv, d = found.pop()
    return Heads(h, kv, d, tp)


def weight_users(v: Value) -> list[tuple[Op, str]]:
    """The ops that read `v` as a weight, through WEIGHT_PREP ops: (linear, 'linear') or
    (embedding, 'table'); any other reader is an error (the pass cannot shard it)."""
    found, todo, seen = [], [v], set()
    while todo:
        x = todo.pop()
        for u in x.users:
            if u.kind == "linear" and u.operand("w") is x and u.operand("x") is not x:
                found.append((u, "linear"))
            elif u.kind == "embedding" and u.operand("table") is x:
                found.append((u, "table"))
            elif u.kind in WEIGHT_PREP and u not in seen:
                seen.add(u)
                todo.extend(u.outputs)
            elif u.kind not in WEIGHT_PREP:
                raise fail(f"{v.ref} reaches '{u.kind}', not a linear or embedding: cannot shard it")
    return sorted(set(found), key=lambda t: t[0].seq)


def transpose_w(p: Value) -> bool:
    """Whether the linears reading `p` take it as [out, in] (HF) rather than [in, out]."""
    layouts = {op.attrs["transpose_w"] for op, slot in weight_users(p) if slot == "linear"}
    if len(layouts) > 1:
        raise fail(f"{p.ref} is read in both [out, in] and [in, out] layouts")
    return layouts.pop() if layouts else True


@dataclass(frozen=True)
class Slice:
    """How one parameter is split: `shard` attrs along the weight's out or in axis."""

    parts: int
    replicas: int = 1
    blocks: tuple[int, ...] = ()
    along_out: bool = True


def _divisible(what: str, size: int, tp: int) -> None:
    if size % tp:
        raise fail(f"{what} ({size}) is not divisible by tp={tp}")


def slice_of(role: str, p: Value, heads: Heads | None, tp: int) -> Slice:
    """The split of parameter `p` in `role` (size checks name the config field)."""
    if role in HEAD_ROLES and heads is None:
        raise fail(f"{p.ref} is an attention weight but the graph has no attention op to "
                   "read the head counts from")
    if role == "pack":
        third = _out_features(p) // 3
        return Slice(tp, blocks=(third, third, third))
    if role in ("k", "v"):
        return Slice(heads.kv_parts, heads.kv_replicas)
    if role == "grouped" and heads.kv_replicas > 1:
        return Slice(heads.kv_parts, heads.kv_replicas)  # then split per group: see grouped_qkv
    if role in ("gate", "up", "down"):
        _divisible("intermediate_size", _in_features(p) if role == "down" else _out_features(p), tp)
    if role in ("embed", "lm_head"):
        vocab = p.type.shape[0] if role == "embed" or transpose_w(p) else p.type.shape[1]
        _divisible("vocab_size", vocab, tp)
        return Slice(tp)  # lm_head: its out features; embed: its rows (slice_axis)
    return Slice(tp, along_out=role not in ROW)


def _out_features(p: Value) -> int:
    return p.type.shape[0 if transpose_w(p) else 1]


def _in_features(p: Value) -> int:
    return p.type.shape[1 if transpose_w(p) else 0]


def slice_axis(role: str, p: Value, s: Slice) -> int:
    """The parameter axis `s` splits: out features for column roles, in for row ones;
    the vocabulary rows of an embedding table."""
    if role == "embed":
        return 0
    out_axis = 0 if transpose_w(p) else 1
    return out_axis if s.along_out else 1 - out_axis


def shard_param(g: Graph, p: Value, role: str, s: Slice, rank: Value) -> list[Op]:
    """The ops giving this rank's slice of `p` (not yet placed)."""
    attrs = {"axis": slice_axis(role, p, s), "parts": s.parts, "replicas": s.replicas,
             "blocks": s.blocks}
    stem = p.name[: -len(".weight")] if p.name.endswith(".weight") else p.name
    return [make_op(g, "shard", [p, rank], attrs, name=f"{stem}.shard")]


def group_rank(g: Graph, rank: Value, replicas: int) -> list[Op]:
    """rank mod replicas: this rank's place among the ranks sharing one kv head."""
    c = make_op(g, "constant", [], {"value": [float(replicas)], "dtype": DType.i64},
                name="kv_replicas")
    outer = make_op(g, "div", [rank, c.output], {}, name="kv_group")
    base = make_op(g, "mul", [outer.output, c.output], {})
    inner = make_op(g, "sub", [rank, base.output], {}, name="group_rank")
    return [c, outer, base, inner]


def grouped_qkv(g: Graph, group_w: Value, heads: Heads, in_group: Value, axis: int) -> list[Op]:
    """PaddleNLP qkv_proj when tp > kv heads: `group_w` is one kv group's [q heads.., k, v]
    features (replicated over `kv_replicas` ranks); rank `in_group` of the group keeps its
    share of the query heads and the whole k and v: [q share, k, v], the grouped layout
    with one kv head and `group_local` query heads."""
    d = heads.head_dim
    split = make_op(g, "split", [group_w], {"axis": axis, "sizes": (heads.group * d, d, d)},
                    name="group_q")
    q, k, v = split.outputs
    q_r = make_op(g, "shard", [q, in_group], {"axis": axis, "parts": heads.kv_replicas},
                  name="q_share")
    cat = make_op(g, "concat", [q_r.output, k, v], {"axis": axis}, name="qkv_shard")
    return [split, q_r, cat]
