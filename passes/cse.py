"""Common subexpression elimination."""

from __future__ import annotations

from llmc.compiler.ir import Graph, Op
from llmc.compiler.passmanager import define_pass


def _exact(v):
    """A hashable form that tells -0.0 from 0.0 and matches NaN with itself."""
    if isinstance(v, float):
        return ("f", v.hex())
    if isinstance(v, tuple):
        return tuple(_exact(x) for x in v)
    return v


def op_key(op: Op) -> tuple:
    """Ops with equal keys compute the same values (all ops are pure)."""
    attrs = tuple(sorted((k, _exact(v)) for k, v in op.attrs.items()))
    return (op.kind, tuple(id(v) for v in op.inputs), attrs, tuple(v.type for v in op.outputs))


def cse(g: Graph) -> int:
    seen: dict[tuple, Op] = {}
    n = 0
    for op in g.ops:
        key = op_key(op)
        first = seen.get(key)
        if first is None:
            seen[key] = op
            continue
        for old, new in zip(op.outputs, first.outputs):
            g.replace_all_uses(old, new)
        g.erase(op)
        n += 1
    return n


define_pass("cse", "Merge ops of the same kind, operands and attributes into the first one.", cse)
