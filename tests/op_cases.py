"""One op per tiny graph: the case builder the per-runtime lowering tests share."""

import numpy as np

from llmc.compiler.builder import Builder
from llmc.compiler.ir import DType

rng = np.random.default_rng(0)


def f32(*shape, positive=False):
    x = rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.1 if positive else x


def i64(*shape, high=6):
    return rng.integers(0, high, shape).astype(np.int64)


class Case:
    """One op on given arrays; `params` names the operands that are weights (static)."""

    def __init__(self, kind, *arrays, params=(), **attrs):
        self.kind, self.arrays, self.params, self.attrs = kind, arrays, set(params), attrs

    def __repr__(self):
        extra = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.kind}[{extra}|{len(self.arrays)}]"

    def graph(self):
        b = Builder("case")
        vals, feeds, weights = [], {}, {}
        for i, a in enumerate(self.arrays):
            name = f"x{i}"
            if i in self.params:
                vals.append(b.param(name, DType.from_np(a.dtype), a.shape))
                weights[name] = a
            else:
                vals.append(b.input(name, DType.from_np(a.dtype), a.shape))
                feeds[name] = a
        out = b.op(self.kind, *vals, **self.attrs)
        b.output(*(out if isinstance(out, tuple) else (out,)))
        return b.graph, feeds, weights
