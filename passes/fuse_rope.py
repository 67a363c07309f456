"""fuse_rope: HF's rotate_half rope on q or k → `rope(x, positions){theta, scaling_factor}`.

The cos/sin tables must trace back to the position ids through
`cast` (→ `div` by a constant factor) → `unsqueeze` → `mul` by a constant inv_freq;
theta is recovered from inv_freq and every entry is checked against it."""

from __future__ import annotations

import numpy as np
from llmc.compiler.ir import DType, Graph, Value
from llmc.compiler.passmanager import PassContext, register_pass
from llmc.compiler.rewrite import P, rule

from .fuse_common import RulePass, const_array, const_size1, known_equal, per_layer_or_count

x, f = P.var("x"), P.var("f")


def _table(fn: str) -> P:
    return P(
        "unsqueeze",
        P(fn, P("concat", f, f, name=f"{fn}_cat")),
        attrs={"axes": (2,)},
    )


ROPE = P(
    "add",
    P("mul", x, _table("cos")),
    P(
        "mul",
        P(
            "concat",
            P("neg", P("slice", x, name="hi")),
            P("slice", x, name="lo"),
            attrs={"axis": lambda a: a in (3, -1)},
        ),
        _table("sin"),
    ),
    name="root",
)


def trace_freqs(f: Value) -> tuple[Value, float, float] | None:
    """(position_ids, theta, scaling_factor) when f = unsqueeze(pos / factor) * inv_freq."""
    mul = f.producer
    if mul is None or mul.kind != "mul":
        return None
    for a, b in (mul.inputs, mul.inputs[::-1]):
        inv = const_array(b)
        un = a.producer
        if (
            inv is None
            or inv.ndim != 1
            or un is None
            or un.kind != "unsqueeze"
            or un.attrs["axes"] != (2,)
        ):
            continue
        pos, factor = un.inputs[0], 1.0
        if pos.producer is not None and pos.producer.kind == "div":
            factor = const_size1(pos.producer.inputs[1], pos.type.rank)
            pos = pos.producer.inputs[0]
        cast = pos.producer
        if (
            factor is None
            or cast is None
            or cast.kind != "cast"
            or cast.inputs[0].type.dtype not in (DType.i64, DType.i32)
        ):
            return None
        theta = theta_of(inv)
        return (cast.inputs[0], theta, factor) if theta is not None else None
    return None


def theta_of(inv_freq: np.ndarray) -> float | None:
    """theta with inv_freq[i] == 1 / theta ** (2i / d) for every i (f32 tolerance), or None."""
    d = 2 * inv_freq.size
    if inv_freq.size < 2 or not 0 < inv_freq[1] < 1:
        return None
    est = float(inv_freq[1]) ** (-d / 2.0)
    exps = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    for theta in (float(round(est)), round(est, 3), est):
        want = (1.0 / (np.float32(theta) ** exps)).astype(np.float32)
        if np.allclose(inv_freq, want, rtol=1e-6, atol=0):
            return theta
    return None


def _last_axis(cat) -> bool:
    """The cos/sin table's concat joins the two frequency halves along the last axis."""
    return cat.attrs["axis"] in (-1, cat.output.type.rank - 1)


def _check(m) -> bool:
    d = m["x"].type.shape[-1]
    if m["x"].type.rank != 4 or not isinstance(d, int) or d % 2:
        return False
    if not (
        _last_axis(m["cos_cat"])
        and _last_axis(m["sin_cat"])
        and m["root"].output.type == m["x"].type
    ):
        return False  # the tables would broadcast x to another shape
    hi, lo, h = m["hi"].attrs, m["lo"].attrs, d // 2
    big = lambda e: e >= d
    return (
        hi["axes"] in ((3,), (-1,))
        and hi["starts"] == (h,)
        and big(hi["ends"][0])
        and not hi["steps"]
        and lo["axes"] == hi["axes"]
        and lo["starts"] == (0,)
        and lo["ends"] == (h,)
        and not lo["steps"]
        and m["f"].type.shape[-1] == h
    )


def _positions_fit(pos: Value, x: Value) -> bool:
    """pos is [seq] or [batch or 1, seq] for x [batch, seq, heads, d], provably."""
    b, n = x.type.shape[:2]
    if pos.type.rank == 1:
        return known_equal(pos.type.shape[0], n)
    if pos.type.rank == 2:
        pb, pn = pos.type.shape
        return known_equal(pn, n) and (pb == 1 or known_equal(pb, b))
    return False


@rule(ROPE, check=_check)
def rope(rw, x, f, hi, lo, root, cos_cat, sin_cat):
    traced = trace_freqs(f)
    if traced is None:
        return None
    pos, theta, factor = traced
    if not _positions_fit(pos, x):
        return None
    return rw.op("rope", x, pos, theta=theta, scaling_factor=factor)


@register_pass
class FuseRope(RulePass):
    """rotate_half rope on q/k with cos/sin tables from the position ids → rope."""

    name = "fuse_rope"
    rules = (rope,)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        rope_layers = ctx.model.get("position", "rope") == "rope"
        return per_layer_or_count(ctx, g, "neg", lambda n: 2 * n if rope_layers else 0)
