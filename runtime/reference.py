"""The reference interpreter: the executable spec of every op, on numpy.

`Interpreter` walks a graph's ops in order and runs each through `run_op`, the one
per-op hook: a subclass overrides it to swap in another kernel (a vendor kernel, a
recording wrapper) for some ops and defer to the reference for the rest. With
`keep_values=True` every value is kept by its SSA name (`interp.values["h3"]`), which is
how llmc's numbers are compared with another implementation op by op; otherwise values
are freed after their last use. `run(g, inputs, weights)` is the one-call form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from llmc.compiler.atomic import replace_dir
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph, Op, TensorType, Value
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


@dataclass
class RunState:
    """One run's live values (by Value) and the sizes its symbolic dims took."""

    env: dict[Value, np.ndarray]
    dims: dict[str, int]


class Interpreter:
    """Runs one graph on numpy arrays; subclass and override `run_op` to replace kernels.

    `weights` maps parameter names to arrays. `check_types` checks every input, parameter
    and result against its declared type. `keep_values` keeps every input and op result
    in `values`, by SSA name, in execution order (graph inputs first).
    """

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray] | None = None, *,
                 check_types: bool = True, keep_values: bool = False):
        self.graph = graph
        self.weights = weights or {}
        self.check_types = check_types
        self.keep_values = keep_values
        self.values: dict[str, np.ndarray] = {}
        self._frees = None if keep_values else last_uses(graph)

    def run_op(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        """Compute one op's results from its operand arrays (in operand order).

        The default runs the op's registered reference kernel. Override it to run another
        kernel for some ops (`op.kind`, `op.attrs`, `op.outputs[i].name` say which) and
        return `super().run_op(op, args)` for the others. Exceptions other than
        `LlmcError` are reported with the op's IR line."""
        return get_op(op.kind).run(args, op.attrs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph on `inputs` (by input name); returns the graph outputs in order."""
        state = self.start(inputs)
        for op in self.graph.ops:
            self.finish_op(op, self.call(op, self.operands(op, state)), state)
        return self.outputs(state)

    # The steps of `run`, public so a driver (runtime/simulate.py) can run several ranks'
    # interpreters op by op in lockstep.
    def start(self, inputs: Mapping[str, np.ndarray]) -> "RunState":
        """Check and bind the graph inputs; the state the other steps thread through."""
        state = RunState({}, {})
        self.values = {}
        missing = [v.name for v in self.graph.inputs if v.name not in inputs]
        if missing:
            raise ExecutionError(f"missing graph inputs: {', '.join('%' + m for m in missing)}")
        for v in self.graph.inputs:
            arr = np.asarray(inputs[v.name])
            check_value(v, arr, state.dims, "input")
            self._bind(state.env, v, arr)
        return state

    def operands(self, op: Op, state: "RunState") -> list[np.ndarray]:
        """The operand arrays of `op` (parameters read from the weights)."""
        return [self._fetch(state.env, v, state.dims) for v in op.inputs]

    def finish_op(self, op: Op, results: list[np.ndarray], state: "RunState") -> None:
        """Check and bind `op`'s results, then free the values it was the last reader of."""
        for v, arr in zip(op.outputs, results):
            self._bind(state.env, v, self._checked(op, v, np.asarray(arr), state.dims))
        for v in (self._frees or {}).get(op, ()):
            state.env.pop(v, None)

    def outputs(self, state: "RunState") -> list[np.ndarray]:
        """The graph outputs, in order."""
        return [self._fetch(state.env, v, state.dims) for v in self.graph.outputs]

    def call(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        """`run_op`, with a kernel failure reported by the op's IR line."""
        return self._call(op, args)

    def _call(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        try:
            results = list(self.run_op(op, args))
        except LlmcError:
            raise
        except Exception as e:  # a kernel failure: report the IR line
            raise ExecutionError(f"{failed_op(op)}: {type(e).__name__}: {e}") from e
        if len(results) != len(op.outputs):
            raise ExecutionError(f"{failed_op(op)}: the kernel returned {len(results)} results, "
                                 f"the op has {len(op.outputs)}")
        return results

    def _checked(self, op: Op, v: Value, arr: np.ndarray, dims: dict[str, int]) -> np.ndarray:
        if self.check_types:
            try:
                check_value(v, arr, dims, "result")
            except ExecutionError as e:
                raise ExecutionError(f"{failed_op(op)}: {e}") from None
        return arr

    def _bind(self, env: dict[Value, np.ndarray], v: Value, arr: np.ndarray) -> None:
        env[v] = arr
        if self.keep_values:
            self.values[v.name] = arr

    def _fetch(self, env: dict[Value, np.ndarray], v: Value, dims: dict[str, int]) -> np.ndarray:
        if not v.is_param:
            return env[v]
        try:
            arr = np.asarray(self.weights[v.name])
        except KeyError:
            raise ExecutionError(f"no weight for parameter {v.ref}") from None
        if self.check_types:
            check_value(v, arr, dims, "parameter")
        return arr


def run(g: Graph, inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray] | None = None,
        check_types: bool = True) -> list[np.ndarray]:
    """Run `g` on numpy inputs (by input name) and weights (by parameter name).

    Returns the graph outputs in order. Values are freed after their last use.
    """
    return Interpreter(g, weights, check_types=check_types).run(inputs)


def run_values(g: Graph, inputs: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every input and op result of one run of `g`, by SSA name, in execution order."""
    interp = Interpreter(g, weights, keep_values=True)
    interp.run(inputs)
    return interp.values


def failed_op(op: Op) -> str:
    """`[line N: ]op `<its IR line>` failed`: how a failing op is named in errors."""
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


# ---- dumping values ---------------------------------------------------------------------
DUMP_INDEX = "index.json"
DUMP_FORMAT = "llmc-values/1"


def write_values(out_dir: str | Path, graph: Graph, values: Mapping[str, np.ndarray]) -> Path:
    """Write `values` (from `run_values`) as one `<name>.npy` per value plus `index.json`.

    The directory appears whole or not at all: it is written beside OUT and renamed into
    place. OUT may be new, empty, or an earlier dump (replaced); anything else is refused
    so that a typo cannot delete a user's directory. bf16 values are stored as f32 (exact;
    `index.json` gives the graph dtype and the stored one)."""
    out = Path(out_dir)
    _check_dump_target(out)

    def fill(tmp: Path) -> None:
        index = _write_arrays(tmp, graph, values)
        (tmp / DUMP_INDEX).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")

    return replace_dir(out, fill, "the values")


def _check_dump_target(out: Path) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise LlmcError(f"{out}: exists and is a symlink or not a directory; --dump-values "
                        "needs a new, empty or earlier dump directory")
    if not any(out.iterdir()):
        return
    try:
        fmt = json.loads((out / DUMP_INDEX).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != DUMP_FORMAT:
        raise LlmcError(f"{out}: is not empty and holds no earlier value dump "
                        f"({DUMP_INDEX}); give a new or empty directory")


def _write_arrays(tmp: Path, graph: Graph, values: Mapping[str, np.ndarray]) -> dict:
    producers = {v.name: op for op in graph.ops for v in op.outputs}
    taken: set[str] = set()
    rows = []
    for name, arr in values.items():
        stem = name if name.lower() not in taken else f"{name}.{len(taken)}"
        taken.add(stem.lower())
        stored = arr.astype(np.float32) if arr.dtype == DType.bf16.np else arr
        np.save(tmp / f"{stem}.npy", stored, allow_pickle=False)
        op = producers.get(name)
        rows.append({"name": name, "file": f"{stem}.npy",
                     "dtype": DType.from_np(arr.dtype).value,
                     "stored_dtype": DType.from_np(stored.dtype).value,
                     "shape": list(arr.shape),
                     "op": op.kind if op else "input",
                     "line": op.loc[0] if op and op.loc else None})
    return {"format": DUMP_FORMAT, "graph": graph.name, "values": rows,
            "outputs": [v.name for v in graph.outputs]}


