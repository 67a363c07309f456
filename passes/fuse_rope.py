"""fuse_rope: HF's rotate_half rope on q or k → `rope(x, positions){theta, scaling_factor}`.

The cos/sin tables must trace back to the position ids through
`cast` (→ `div` by a constant factor) → `unsqueeze` → `mul` by a constant inv_freq;
theta is recovered from inv_freq and every entry is checked against it."""

from __future__ import annotations

import numpy as np
from llmc.compiler.ir import DType, Graph, Op, Value
from llmc.compiler.passmanager import PassContext
from llmc.compiler.rewrite import P, rule, rule_pass

from .fuse_common import const_array, const_size1, known_equal, per_layer_or_count

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
    lhs, rhs = mul.operand("lhs"), mul.operand("rhs")
    for a, b in ((lhs, rhs), (rhs, lhs)):
        inv = const_array(b)
        un = a.producer
        if inv is None or inv.ndim != 1 or un is None or un.kind != "unsqueeze" or un.attrs["axes"] != (2,):
            continue
        pos, factor = un.operand("x"), 1.0
        if pos.producer is not None and pos.producer.kind == "div":
            factor = const_size1(pos.producer.operand("rhs"), pos.type.rank)
            pos = pos.producer.operand("lhs")
        cast = pos.producer
        if factor is None or cast is None or cast.kind != "cast":
            return None
        ids = cast.operand("x")
        theta = theta_of(inv)
        if ids.type.dtype not in (DType.i64, DType.i32) or theta is None:
            return None
        return ids, theta, factor
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


def _last_axis(cat: Op) -> bool:
    """The cos/sin table's concat joins the two frequency halves along the last axis."""
    return cat.attrs["axis"] in (-1, cat.output.type.rank - 1)


def _halves(hi: Op, lo: Op, d: int) -> bool:
    """hi = x[..., d/2:] and lo = x[..., :d/2] along the last axis, without steps."""
    h = d // 2
    return (
        hi.attrs["axes"] in ((3,), (-1,))
        and hi.attrs["starts"] == (h,)
        and hi.attrs["ends"][0] >= d
        and not hi.attrs["steps"]
        and lo.attrs["axes"] == hi.attrs["axes"]
        and lo.attrs["starts"] == (0,)
        and lo.attrs["ends"] == (h,)
        and not lo.attrs["steps"]
    )


def _check(x: Value, f: Value, hi: Op, lo: Op, root: Op, cos_cat: Op, sin_cat: Op) -> bool:
    d = x.type.shape[-1]
    if x.type.rank != 4 or not isinstance(d, int) or d % 2:
        return False
    if not (_last_axis(cos_cat) and _last_axis(sin_cat) and root.output.type == x.type):
        return False  # the tables would broadcast x to another shape
    return _halves(hi, lo, d) and f.type.shape[-1] == d // 2


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
def rope(rw, x, f):
    traced = trace_freqs(f)
    if traced is None:
        return None
    pos, theta, factor = traced
    if not _positions_fit(pos, x):
        return None
    return rw.op("rope", x, pos, theta=theta, scaling_factor=factor)


def _rope_layers(g: Graph, ctx: PassContext) -> int:
    rope_layers = ctx.model.get("position", "rope") == "rope"
    return per_layer_or_count(ctx, g, "neg", lambda n: 2 * n if rope_layers else 0)


rule_pass("fuse_rope", "rotate_half rope on q/k with cos/sin tables from the position ids → rope.",
          [rope], expected=_rope_layers)
