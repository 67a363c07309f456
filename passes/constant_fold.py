"""Constant folding through the ops' reference kernels."""

from __future__ import annotations

import numpy as np

from llmc.compiler.builder import make_op
from llmc.compiler.ir import Graph, Op
from llmc.compiler.ops import get_op
from llmc.compiler.passmanager import Option, define_pass


def foldable(op: Op, max_elements: int) -> bool:
    """A pure op of constants only (never parameters) with results of at most `max_elements`."""
    if op.kind == "constant" or "pure" not in get_op(op.kind).traits:
        return False
    if not all(v.producer is not None and v.producer.kind == "constant" for v in op.inputs):
        return False
    return all((v.type.numel() or max_elements + 1) <= max_elements for v in op.outputs)


def constant_fold(g: Graph, max_elements: int) -> int:
    n = 0
    for op in g.ops:
        if not foldable(op, max_elements):
            continue
        args = [get_op("constant").run([], v.producer.attrs)[0] for v in op.inputs]
        results = get_op(op.kind).run(args, op.attrs)
        for v, arr in zip(op.outputs, results):
            arr = np.asarray(arr, dtype=v.type.dtype.np)
            c = make_op(g, "constant", [], {
                "value": tuple(float(e) for e in arr.astype(np.float64).ravel()),
                "shape": tuple(arr.shape), "dtype": v.type.dtype}, name=None)
            g.insert_before(op, [c])
            g.replace_all_uses(v, c.output)
        g.erase(op)
        n += 1
    g.renumber()
    return n


define_pass("constant_fold", "Evaluate ops whose operands are all constants (never "
            "parameters) into a constant.", constant_fold,
            options={"max_elements": Option(4096, "largest result (elements) to fold", min=0)})
