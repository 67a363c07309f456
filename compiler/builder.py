"""A small Python API for building graphs: `b.matmul(x, w, transpose_b=True)`."""

from __future__ import annotations

from typing import Iterable

from .ir import Dim, DType, Graph, Op, TensorType, Value
from .ops import get_op


class Builder:
    """Appends ops to a graph, inferring result types from the op registry.

    Any registered op is a method: `b.rms_norm(x, w, epsilon=1e-5)`. Pass
    `name=` to choose the result's value name (a fresh one is made if taken).
    """

    def __init__(self, name: str = "main", graph: Graph | None = None):
        self.graph = graph if graph is not None else Graph(name=name)

    def input(self, name: str, dtype: DType | str, shape: Iterable[Dim]) -> Value:
        return self.graph.add_input(name, TensorType(DType(dtype), tuple(shape)))

    def param(self, name: str, dtype: DType | str, shape: Iterable[Dim]) -> Value:
        return self.graph.add_param(name, TensorType(DType(dtype), tuple(shape)))

    def op(self, kind: str, *inputs: Value | None, name: str | None = None, **attrs):
        """Append one op; returns its result (or a tuple of results)."""
        op = make_op(self.graph, kind, [v for v in inputs if v is not None], attrs, name)
        self.graph.append(op)
        return op.outputs[0] if len(op.outputs) == 1 else tuple(op.outputs)

    def output(self, *values: Value) -> None:
        self.graph.outputs.extend(values)

    def __getattr__(self, kind: str):
        if kind.startswith("_"):
            raise AttributeError(kind)
        get_op(kind)
        return lambda *inputs, name=None, **attrs: self.op(kind, *inputs, name=name, **attrs)


def make_op(graph: Graph, kind: str, inputs: list[Value], attrs: dict,
            name: str | None = None) -> Op:
    """A new op (not yet placed in the graph) with inferred, freshly named results."""
    opdef = get_op(kind)
    attrs = opdef.normalize_attrs(attrs)
    types = opdef.infer_types([v.type for v in inputs], attrs)
    outs = [Value(graph.fresh_name(name if i == 0 else (f"{name}_{i}" if name else None)), t)
            for i, t in enumerate(types)]
    return Op(kind, inputs, outs, attrs)
