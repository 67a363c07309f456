"""Lowering llmc IR to an ONNX graph, op by op, through a table keyed by op kind.

Values computed only from parameters and constants (merged q/k/v weights, Baichuan's
normalised lm_head, rope and ALiBi tables...) are evaluated once here with the reference
kernels and become initializers; a `linear` weight is stored pre-transposed so every
projection is a plain MatMul. Initializers go to a `sink` (export.py writes each to the
external data file as it comes, so no second copy of the weights is held).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph, Op, Value
from llmc.compiler.ops import get_op

OPSET = 23  # RMSNormalization and RotaryEmbedding are standard ops from 23 on
MS_DOMAIN = "com.microsoft"
ONNX_DTYPES = {
    DType.f32: TensorProto.FLOAT, DType.f16: TensorProto.FLOAT16, DType.bf16: TensorProto.BFLOAT16,
    DType.f64: TensorProto.DOUBLE, DType.i64: TensorProto.INT64, DType.i32: TensorProto.INT32,
    DType.i8: TensorProto.INT8, DType.u8: TensorProto.UINT8, DType.bool: TensorProto.BOOL,
}
Lowerer = Callable[["Lowering", Op, list], None]
LOWERINGS: dict[str, Lowerer] = {}
Sink = Callable[[str, np.ndarray], TensorProto]


class LoweringError(LlmcError):
    """An op or graph the ONNX lowering cannot express."""


def lowers(*kinds: str):
    """Register `fn(ctx, op, outs)` as the lowering of op kinds; it must define `outs`
    (the ONNX names of the op's results, in order)."""

    def wrap(fn: Lowerer) -> Lowerer:
        for k in kinds:
            LOWERINGS[k] = fn
        return fn

    return wrap


def inline_sink(name: str, arr: np.ndarray) -> TensorProto:
    """Initializers held in the model itself (small graphs, tests)."""
    return onnx.numpy_helper.from_array(np.asarray(arr, order="C"), name)


class Lowering:
    """The state of one lowering: ONNX names of IR values, nodes, initializers."""

    def __init__(self, graph: Graph, weights, target: str, max_positions: int, sink: Sink):
        self.graph, self.weights, self.target = graph, weights, target
        self.max_positions, self.sink = max_positions, sink
        self.names: dict[Value, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.memo: dict = {}
        self._used: set[str] = set()
        self.static = static_values(graph)

    # ---- names and nodes -------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """An ONNX name not used yet in this model."""
        base, i = hint.replace("/", "."), 0
        name = base
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], outs: list[str] | int = 1,
             domain: str = "", **attrs) -> list[str]:
        """Append a node; `outs` gives its output names or how many fresh ones to make."""
        if isinstance(outs, int):
            outs = [self.fresh(f"{op_type.lower()}_out") for _ in range(outs)]
        name = self.fresh(f"{op_type}_{len(self.nodes)}")
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None,
                                           **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], out: str | None = None, domain: str = "",
            **attrs) -> str:
        """A node with one result; returns its name."""
        return self.node(op_type, inputs, [out] if out else 1, domain, **attrs)[0]

    # ---- constants and weights ---------------------------------------------------------
    def const(self, arr: np.ndarray, hint: str = "const") -> str:
        """An initializer holding `arr`."""
        name = self.fresh(hint)
        self.initializers.append(self.sink(name, np.asarray(arr, order="C")))
        return name

    def ints(self, *vals: int) -> str:
        """A shared i64 1-D constant (shapes, axes)."""
        key = ("ints", vals)
        if key not in self.memo:
            self.memo[key] = self.const(np.asarray(vals, np.int64), "ints")
        return self.memo[key]

    def scalar(self, val, dtype=np.float32) -> str:
        """A shared 0-d constant."""
        key = ("scalar", float(val), np.dtype(dtype).name)
        if key not in self.memo:
            self.memo[key] = self.const(np.asarray(val, dtype), "scalar")
        return self.memo[key]

    def array(self, v: Value, cache: dict | None = None) -> np.ndarray:
        """The value of a static `v` (parameters and constants only), by the reference kernels."""
        if v.is_param:
            try:
                return np.asarray(self.weights[v.name])
            except KeyError:
                raise LoweringError(f"no weight for parameter {v.ref}") from None
        cache = {} if cache is None else cache
        if v not in cache:
            op = v.producer
            args = [self.array(i, cache) for i in op.inputs]
            for out, arr in zip(op.outputs, get_op(op.kind).run(args, op.attrs)):
                cache[out] = np.asarray(arr)
        return cache[v]

    def tensor(self, v: Value) -> str:
        """The ONNX name of `v`; a static value becomes an initializer on first use."""
        if v not in self.names:
            if v not in self.static:
                raise LoweringError(f"{v.ref} is used before it is defined")
            self.names[v] = self.const(self.array(v), v.name)
        return self.names[v]

    def matmul_weight(self, w: Value, transpose: bool) -> str:
        """A static linear weight stored as MatMul's [in, out] operand (transposed once here)."""
        if not transpose:
            return self.tensor(w)
        key = ("weight_t", w)
        if key not in self.memo:
            arr = np.ascontiguousarray(self.array(w).T)
            self.memo[key] = self.const(arr, f"{w.name}.T")
        return self.memo[key]


def static_values(g: Graph) -> set[Value]:
    """Values that depend on parameters and constants only."""
    static = set(g.params.values())
    for op in g.ops:
        if all(v in static for v in op.inputs):
            static.update(op.outputs)
    return static


def io_name(g: Graph, v: Value, index: int) -> str:
    """The ONNX name of graph output `index`: `logits`, and for the cache form the
    present buffer of each past input (`past_key_0` → `present_key_0`)."""
    if index == 0:
        return "logits"
    pasts = [i.name for i in g.inputs if i.name.startswith("past_") and i.name != "past_lens"]
    if len(pasts) == len(g.outputs) - 1:
        return "present_" + pasts[index - 1][len("past_"):]
    return v.name


def value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    """The ONNX type of IR value `v` (symbolic dims become dim_params)."""
    dims = [d if isinstance(d, int) else (None if d == "?" else d) for d in v.type.shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[v.type.dtype], dims)


def lower_graph(graph: Graph, weights, *, target: str = "cpu", max_positions: int = 4096,
                sink: Sink = inline_sink) -> onnx.ModelProto:
    """The ONNX model computing `graph` (inputs by their IR names; outputs per io_name)."""
    ctx = Lowering(graph, weights, target, max_positions, sink)
    for v in graph.inputs:
        ctx.names[v] = ctx.fresh(v.name)
    out_names = {}
    for i, v in enumerate(graph.outputs):
        if v not in out_names and v.producer is not None and v not in ctx.static:
            out_names[v] = ctx.fresh(io_name(graph, v, i))
    for op in graph.ops:
        if all(o in ctx.static for o in op.outputs):
            continue
        fn = LOWERINGS.get(op.kind)
        if fn is None:
            raise LoweringError(
                f"op '{op.kind}' has no ONNX lowering (target {target}); compile for the cpu "
                "target (per-op kernels), or run it with --runtime reference")
        outs = [out_names.get(o) or ctx.fresh(o.name) for o in op.outputs]
        fn(ctx, op, outs)
        ctx.names.update(zip(op.outputs, outs))
    outputs = []
    for i, v in enumerate(graph.outputs):
        name = io_name(graph, v, i)
        if ctx.tensor(v) != name:  # an input, a constant or a repeated output
            ctx.one("Identity", [ctx.tensor(v)], ctx.fresh(name))
            name = ctx.nodes[-1].output[0]
        outputs.append(value_info(name, v))
    nodes = live_nodes(ctx.nodes, [o.name for o in outputs])
    used = {i for n in nodes for i in n.input}
    inits = [t for t in ctx.initializers if t.name in used]
    g = helper.make_graph(nodes, graph.name, [value_info(ctx.names[v], v) for v in graph.inputs],
                          outputs, initializer=inits)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(g, opset_imports=opsets, producer_name="llmc", ir_version=10)


def live_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """`nodes` (in order) less those no graph output depends on: lowerings that read a
    fused kernel's operands past a chain (rope folded into attention) leave it dead."""
    needed, kept = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output if o):
            kept.append(n)
            needed.update(i for i in n.input if i)
    return kept[::-1]
