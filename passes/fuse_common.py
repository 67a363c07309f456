"""Helpers shared by the rewrite passes: expected match counts from model facts,
constants, the weight layout of sibling linears."""

from __future__ import annotations

from typing import Callable

import numpy as np
from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.passmanager import PassContext
from llmc.compiler.rewrite import P


def num_layers(ctx: PassContext) -> int | None:
    """The model's layer count, when the compile driver put it in the context."""
    n = ctx.model.get("num_layers")
    return int(n) if n is not None else None


def count(g: Graph, kind: str) -> int:
    """How many ops of `kind` the graph holds (an anchor count for expected matches)."""
    return g.op_counts().get(kind, 0)


def per_layer_or_count(
    ctx: PassContext, g: Graph, kind: str, per_layers: Callable[[int], int] = lambda n: n
) -> int:
    """Expected matches: `per_layers(num_layers)` when the context gives the layer count,
    else how many `kind` ops (the pattern's anchor) the graph holds."""
    n = num_layers(ctx)
    return per_layers(n) if n is not None else count(g, kind)


def per_layer(kind: str, per_layers: Callable[[int], int] = lambda n: n):
    """An `expected` formula: per_layer_or_count over the anchor op `kind`."""
    return lambda g, ctx: per_layer_or_count(ctx, g, kind, per_layers)


def const_array(v: Value) -> np.ndarray | None:
    """The value of a `constant` op's result as an f64 array, or None."""
    op = v.producer
    if op is None or op.kind != "constant":
        return None
    arr = np.asarray(op.attrs["value"], dtype=np.float64)
    shape = op.attrs["shape"]
    return np.broadcast_to(arr.reshape(()), shape) if arr.size == 1 else arr.reshape(shape)


def const_scalar(v: Value) -> float | None:
    """A constant holding one value (any shape that broadcasts it), or None."""
    arr = const_array(v)
    if arr is None or arr.size == 0 or not np.all(arr == arr.flat[0]):
        return None
    return float(arr.flat[0])


def const_size1(v: Value, max_rank: int) -> float | None:
    """The value of a one-element constant of rank <= `max_rank` (so that broadcasting it
    against a rank-`max_rank` tensor leaves that tensor's shape alone), or None."""
    arr = const_array(v)
    if arr is None or arr.size != 1 or arr.ndim > max_rank:
        return None
    return float(arr.flat[0])


def known_equal(a, b) -> bool:
    """Two dims provably equal: the same int or the same named symbol (never "?")."""
    return a == b and a != "?"


def known_shape(shape, want) -> bool:
    """`shape` provably equals `want`, dim by dim (see known_equal)."""
    return len(shape) == len(want) and all(known_equal(a, b) for a, b in zip(shape, want))


def users_after(v: Value, op: Op, ignore: set[Op]) -> bool:
    """True when every user of `v` outside `ignore` comes after `op` in program order."""
    return all(u in ignore or u.seq > op.seq for u in v.users)


def all_users_after(vs, op: Op, ignore: set[Op]) -> bool:
    """users_after for each value of `vs`: a fused op placed before `op` that takes over
    these values still defines them before every remaining use."""
    return all(users_after(v, op, ignore) for v in vs)


def is_weight(v: Value) -> bool:
    """A graph parameter, or one rank's slice of one (`shard(@w, rank)`, from
    shard_tensor_parallel): what weight-merging fusions may concatenate."""
    op = v.producer
    return v.is_param or (op is not None and op.kind == "shard" and op.operand("x").is_param)


def weight_concat_axis(transpose_w: bool) -> int:
    """The axis along which sibling linear weights concatenate so that their outputs
    concatenate: the rows of a [out, in] weight (transpose_w), else the columns of [in, out]."""
    return 0 if transpose_w else 1


BSHD = {"perm": (0, 2, 1, 3)}
# HF-eager scaled dot-product attention, [b, s, h, d] in and out: transpose(softmax(q·kᵀ ×
# scale + mask)·v). Both attention rules anchor on it; they differ in where k, v come from.
SDPA = P(
    "transpose",
    P("matmul",
      P("softmax",
        P("add",
          P("mul",
            P("matmul", P("transpose", P.var("q"), attrs=BSHD), P.var("kr"),
              attrs={"transpose_a": False, "transpose_b": True}),
            P("constant", name="scale"), name="scaled"),
          P.var("mask"), name="masked"),
        name="sm"),
      P.var("vr"), attrs={"transpose_a": False, "transpose_b": False}),
    attrs=BSHD,
)
