"""The reference interpreter: the executable spec of every op, on numpy."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph, Op, TensorType, Value
from llmc.compiler.ops import get_op
from llmc.compiler.text import print_op


class ExecutionError(LlmcError):
    """An op failed at run time; the message holds the op's IR line."""


def check_value(v: Value, arr: np.ndarray, dims: dict[str, int], what: str) -> None:
    """Check an array against a value's type, binding symbolic dims consistently."""
    t: TensorType = v.type
    if arr.dtype != t.dtype.np:
        raise ExecutionError(f"{what} {v.ref}: expected dtype {t.dtype.value}, got {arr.dtype}")
    if arr.ndim != t.rank:
        raise ExecutionError(f"{what} {v.ref}: expected shape {t}, got {list(arr.shape)}")
    for d, n in zip(t.shape, arr.shape):
        if isinstance(d, int) and d != n:
            raise ExecutionError(f"{what} {v.ref}: expected shape {t}, got {list(arr.shape)}")
        if isinstance(d, str) and d != "?":
            if dims.setdefault(d, n) != n:
                raise ExecutionError(f"{what} {v.ref}: dim '{d}' is {n} here but {dims[d]} elsewhere")


def last_uses(g: Graph) -> dict[Op, list[Value]]:
    """For each op, the values whose last reader it is (freed right after it runs)."""
    last: dict[Value, Op] = {}
    for op in g.ops:
        for v in op.inputs:
            if not v.is_param:
                last[v] = op
    keep = set(g.outputs)
    out: dict[Op, list[Value]] = {}
    for v, op in last.items():
        if v not in keep:
            out.setdefault(op, []).append(v)
    return out


def run(g: Graph, inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray] | None = None,
        check_types: bool = True) -> list[np.ndarray]:
    """Run `g` on numpy inputs (by input name) and weights (by parameter name).

    Returns the graph outputs in order. Values are freed after their last use.
    """
    weights = weights or {}
    env: dict[Value, np.ndarray] = {}
    dims: dict[str, int] = {}
    missing = [v.name for v in g.inputs if v.name not in inputs]
    if missing:
        raise ExecutionError(f"missing graph inputs: {', '.join('%' + m for m in missing)}")
    for v in g.inputs:
        arr = np.asarray(inputs[v.name])
        check_value(v, arr, dims, "input")
        env[v] = arr
    frees = last_uses(g)
    for op in g.ops:
        args = [_fetch(env, v, weights, dims, check_types) for v in op.inputs]
        try:
            results = get_op(op.kind).run(args, op.attrs)
        except LlmcError:
            raise
        except Exception as e:  # a kernel failure: report the IR line
            raise ExecutionError(f"{_where(op)}: {type(e).__name__}: {e}") from e
        for v, arr in zip(op.outputs, results):
            arr = np.asarray(arr)
            if check_types:
                try:
                    check_value(v, arr, dims, "result")
                except ExecutionError as e:
                    raise ExecutionError(f"{_where(op)}: {e}") from None
            env[v] = arr
        for v in frees.get(op, ()):
            env.pop(v, None)
    return [_fetch(env, v, weights, dims, check_types) for v in g.outputs]


def _fetch(env, v: Value, weights, dims, check_types) -> np.ndarray:
    if v.is_param:
        try:
            arr = weights[v.name]
        except KeyError:
            raise ExecutionError(f"no weight for parameter {v.ref}") from None
        arr = np.asarray(arr)
        if check_types:
            check_value(v, arr, dims, "parameter")
        return arr
    return env[v]


def _where(op: Op) -> str:
    loc = f"line {op.loc[0]}: " if op.loc else ""
    return f"{loc}op `{print_op(op)}` failed"


def random_inputs(g: Graph, dims: Mapping[str, int], seed: int = 0,
                  int_high: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random arrays for every graph input (ints in [0, int_high[name] or 8))."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in g.inputs:
        shape = [d if isinstance(d, int) else dims[d] for d in v.type.shape]
        if v.type.dtype.is_float:
            out[v.name] = rng.standard_normal(shape).astype(v.type.dtype.np)
        elif v.type.dtype.value == "bool":
            out[v.name] = rng.random(shape) < 0.5
        else:
            hi = (int_high or {}).get(v.name, 8)
            out[v.name] = rng.integers(0, hi, size=shape).astype(v.type.dtype.np)
    return out


def random_weights(g: Graph, dims: Mapping[str, int] | None = None, seed: int = 1,
                   scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random weights for every parameter (for numeric golden tests)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in g.params.values():
        shape = [d if isinstance(d, int) else (dims or {})[d] for d in p.type.shape]
        if p.type.dtype.is_float:
            out[p.name] = (rng.standard_normal(shape) * scale).astype(p.type.dtype.np)
        else:
            out[p.name] = rng.integers(0, 4, size=shape).astype(p.type.dtype.np)
    return out
