"""Constant folding through the ops' reference kernels."""

from __future__ import annotations

import numpy as np

from llmc.compiler.builder import make_op
from llmc.compiler.ir import Graph
from llmc.compiler.ops import get_op
from llmc.compiler.passmanager import Pass, PassContext, register_pass


@register_pass
class ConstantFold(Pass):
    """Evaluate ops whose operands are all constants (never parameters) into a constant."""

    name = "constant_fold"
    max_elements: int = 4096

    def run(self, g: Graph, ctx: PassContext) -> int:
        n = 0
        for op in g.ops:
            if op.kind == "constant" or "pure" not in get_op(op.kind).traits:
                continue
            if not all(v.producer is not None and v.producer.kind == "constant" for v in op.inputs):
                continue
            if any((v.type.numel() or self.max_elements + 1) > self.max_elements for v in op.outputs):
                continue
            args = [get_op("constant").run([], v.producer.attrs)[0] for v in op.inputs]
            results = get_op(op.kind).run(args, op.attrs)
            for v, arr in zip(op.outputs, results):
                arr = np.asarray(arr, dtype=v.type.dtype.np)
                c = make_op(g, "constant", [], {
                    "value": tuple(float(e) for e in arr.astype(np.float64).ravel()),
                    "shape": tuple(arr.shape), "dtype": v.type.dtype}, name=None)
                g.insert_before(op, [c])
                g.replace_all_uses(v, c.outputs[0])
            g.erase(op)
            n += 1
        g.renumber()
        return n
