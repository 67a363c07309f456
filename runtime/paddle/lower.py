"""Lowering llmc IR to Paddle dygraph calls, op by op, through a table keyed by op kind.

A lowering runs once per op when a graph is lowered: it reads the op's operands by name
and its attrs, picks the kernel (env.Kernels), and returns a `Step`, a function from the
environment (IR value → paddle Tensor) to the op's results in order. `PaddleProgram`
holds the steps and the parameters (Paddle parameters, so autograd reaches them) and
runs the graph in dynamic-graph mode.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph, Op, Value

from .env import Kernels, choose_kernels, import_paddle, place_for
from .segments import Segment, segments

Env = dict[Value, object]
Step = Callable[[Env], list]
Lowerer = Callable[[Op, "Lowering"], Step]
LOWERINGS: dict[str, Lowerer] = {}
PADDLE_DTYPES = {
    DType.f32: "float32", DType.f16: "float16", DType.bf16: "bfloat16", DType.f64: "float64",
    DType.i64: "int64", DType.i32: "int32", DType.i8: "int8", DType.u8: "uint8",
    DType.bool: "bool",
}


class LoweringError(LlmcError):
    """An op the Paddle lowering cannot express."""


def lowers(*kinds: str):
    """Register `fn(op, ctx) -> Step` as the Paddle lowering of op kinds."""

    def wrap(fn: Lowerer) -> Lowerer:
        for k in kinds:
            LOWERINGS[k] = fn
        return fn

    return wrap


class Lowering:
    """What a lowering needs: the paddle modules, the device's kernel choice and the graph."""

    def __init__(self, kernels: Kernels, graph: Graph | None = None):
        paddle = import_paddle()
        import paddle.incubate.nn.functional as incubate
        import paddle.nn.functional as functional

        self.paddle, self.F, self.IF = paddle, functional, incubate
        self.kernels, self.graph = kernels, graph
        self._readers: dict[Value, int] | None = None
        # Per-run values the lowerings share, keyed by the tensor they derive from (only
        # the latest one is kept): e.g. rope's cos/sin tables for this forward's positions.
        self.memo: dict = {}

    def sole_reader(self, v: Value) -> bool:
        """Whether one op reads `v` and the graph does not return it: a lowering may then
        update v's tensor in place (as Paddle's own cache-writing kernels do)."""
        if self.graph is None:
            return False
        if self._readers is None:
            self._readers = {}
            for op in self.graph.ops:
                for x in op.inputs:
                    self._readers[x] = self._readers.get(x, 0) + 1
        return self._readers.get(v, 0) == 1 and v not in self.graph.outputs

    def const(self, arr: np.ndarray):
        """A constant tensor (no gradient)."""
        return self.paddle.to_tensor(np.ascontiguousarray(arr))


def operand_reader(op: Op, *names: str) -> Callable[[Env], list]:
    """A function env → the tensors of op's operands `names` (None for an absent optional)."""
    values = [op.operand(n) for n in names]
    return lambda env: [None if v is None else env[v] for v in values]


def last_uses(g: Graph) -> dict[int, list[Value]]:
    """Op index → the values whose last reader it is (dropped from the env after it)."""
    last: dict[Value, int] = {}
    for i, op in enumerate(g.ops):
        for v in op.inputs:
            if not v.is_param:
                last[v] = i
    keep = set(g.outputs)
    out: dict[int, list[Value]] = {}
    for v, i in last.items():
        if v not in keep:
            out.setdefault(i, []).append(v)
    return out


def lower_ops(graph: Graph, kernels: Kernels) -> list[tuple[Op, Step]]:
    """Each op of `graph` with its Paddle step; an op without a lowering is an error."""
    ctx = Lowering(kernels, graph)
    steps = []
    for op in graph.ops:
        fn = LOWERINGS.get(op.kind)
        if fn is None:
            raise LoweringError(f"op '{op.kind}' has no Paddle lowering")
        steps.append((op, fn(op, ctx)))
    return steps


class PaddleProgram:
    """A graph lowered to Paddle on one device, with its weights as Paddle parameters.

    `program(inputs)` runs the graph (inputs by name, numpy arrays or tensors) and returns
    its outputs as tensors; float parameters are trainable unless `trainable=False`.
    A forward-only program (`trainable=False`) may take forward-only kernels, and runs the
    ops that read only weights (e.g. ascend910b's qkv / gate_up weight concats) once, here:
    their results stay, and the parameters nothing else reads are let go.
    `kernels.report()` says which kernel each op kind ran with."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], *, device: str = "cpu",
                 trainable: bool = True, kernels: Kernels | None = None):
        self.paddle = import_paddle()
        self.place = place_for(device)
        self.graph = graph
        self.kernels = kernels or choose_kernels(device, inference=not trainable)
        self.params = {name: self._param(v, weights, trainable) for name, v in graph.params.items()}
        self.steps = lower_ops(graph, self.kernels)
        self._frees = last_uses(graph)
        self.segments = segments(graph)
        self.constants: Env = {v: self.params[v.name] for v in graph.params.values()}
        self._folded: set[int] = set() if trainable else self._fold_weight_ops()

    def _fold_weight_ops(self) -> set[int]:
        """Run the steps whose operands are all weights or their results, once; keep in
        `constants` only what the other steps read or the graph returns."""
        folded: set[int] = set()
        with self.paddle.no_grad():
            for i, (op, step) in enumerate(self.steps):
                if all(v in self.constants for v in op.inputs):
                    self.constants.update(zip(op.outputs, step(self.constants)))
                    folded.add(i)
        needed = set(self.graph.outputs)
        for i, (op, _) in enumerate(self.steps):
            if i not in folded:
                needed.update(op.inputs)
        self.constants = {v: t for v, t in self.constants.items() if v in needed}
        self.params = {v.name: t for v, t in self.constants.items() if v.is_param}
        return folded

    def _param(self, v: Value, weights: Mapping[str, np.ndarray], trainable: bool):
        try:
            arr = np.asarray(weights[v.name])
        except KeyError:
            raise LoweringError(f"no weight for parameter {v.ref}") from None
        if tuple(arr.shape) != tuple(v.type.shape):
            raise LoweringError(f"parameter {v.ref}: expected shape {list(v.type.shape)}, got "
                                f"{list(arr.shape)}")
        from paddle.base.framework import EagerParamBase

        t = self.paddle.to_tensor(np.ascontiguousarray(arr, dtype=v.type.dtype.np))
        return EagerParamBase.from_tensor(t, trainable=trainable and v.type.dtype.is_float,
                                          name=v.name)

    def parameters(self) -> list:
        """The trainable parameters, in graph order."""
        return [p for p in self.params.values() if not p.stop_gradient]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter as a numpy array, by its graph (checkpoint) name."""
        return {name: p.numpy() for name, p in self.params.items()}

    def __call__(self, inputs: Mapping[str, object], recompute: bool = False) -> list:
        """The graph's outputs for `inputs`; `recompute` keeps no activation inside a
        decoder layer for the backward pass (each layer is run again there)."""
        env: Env = dict(self.constants)
        for v in self.graph.inputs:
            if v.name not in inputs:
                raise LoweringError(f"missing graph input %{v.name}")
            x = inputs[v.name]
            env[v] = x if isinstance(x, self.paddle.Tensor) else self.paddle.to_tensor(
                np.asarray(x))
        if not recompute:
            self._run_steps(env, 0, len(self.steps))
        for seg in (self.segments if recompute else ()):
            if seg.layer is None:
                self._run_steps(env, seg.start, seg.stop)
            else:
                self._recompute(env, seg)
        return [env[v] for v in self.graph.outputs]

    def _run_steps(self, env: Env, start: int, stop: int) -> None:
        for i in range(start, stop):
            op, step = self.steps[i]
            if i not in self._folded:
                env.update(zip(op.outputs, step(env)))
            for v in self._frees.get(i, ()):
                env.pop(v, None)

    def _recompute(self, env: Env, seg: Segment) -> None:
        from paddle.distributed.fleet.utils import recompute

        def run(*tensors):
            local = dict(self.constants)
            local.update(zip(seg.inputs, tensors))
            self._run_steps(local, seg.start, seg.stop)
            return tuple(local[v] for v in seg.outputs)

        outs = recompute(run, *[env[v] for v in seg.inputs])
        env.update(zip(seg.outputs, outs if isinstance(outs, (tuple, list)) else (outs,)))
        for i in range(seg.start, seg.stop):
            for v in self._frees.get(i, ()):
                env.pop(v, None)

    def logits(self, input_ids) -> np.ndarray:
        """Full-form output 0 for input_ids [batch, seq] at positions 0..seq-1, without
        autograd, as numpy (the logits function RecomputeLM and generation take)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        pos = np.broadcast_to(np.arange(ids.shape[-1], dtype=np.int64), ids.shape).copy()
        with self.paddle.no_grad():
            return self({"input_ids": ids, "position_ids": pos})[0].numpy()
