"""The graph IR: SSA values, ops and graphs (dtypes and tensor types in dtypes.py).

A graph is a flat SSA dataflow graph. Values are produced by exactly one op
(or are graph inputs / parameters) and carry a `TensorType`. Ops keep a
position key (`seq`) so that rewrites can insert and erase in O(1) and the
graph re-sorts itself only when its op list is read after a change.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Union

from .dtypes import Dim, DType, TensorType, types_compatible
from .outputs import OutputList
from .signature import Names, signature

__all__ = ["AttrValue", "Dim", "DType", "Graph", "Op", "OutputList", "TensorType", "Value",
           "check_name", "format_attr", "types_compatible"]

VALUE_NAME = re.compile(r"[A-Za-z0-9_.]+")  # after '%' in the text format
PARAM_NAME = re.compile(r"[A-Za-z0-9_./\-]+")  # after '@'


def check_name(name: str, kind: str) -> None:
    """Names must be spellable in the text format (see compiler/llmc.lark)."""
    pattern = PARAM_NAME if kind == "parameter" else VALUE_NAME
    if not pattern.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} has characters the IR text format cannot spell "
                         f"(allowed: {pattern.pattern})")


class Value:
    """An SSA value. `producer` is the op defining it (None for inputs and params)."""

    __slots__ = ("name", "type", "producer", "users", "is_param")

    def __init__(self, name: str, type: TensorType, producer: "Op | None" = None,
                 is_param: bool = False):
        self.name = name
        self.type = type
        self.producer = producer
        self.users: dict[Op, None] = {}
        self.is_param = is_param

    @property
    def ref(self) -> str:
        """How the value is referenced in the text format."""
        return ("@" if self.is_param else "%") + self.name

    def __repr__(self) -> str:
        return f"{self.ref}: {self.type}"


AttrValue = Union[int, float, bool, str, tuple, DType]


class Op:
    """An operation: kind, operand values, result values and typed attributes.

    Operands and results are reached by the names the op's schema declares:
    `op.operand("w")`, `op.result("cache_k_out")`, `op.operands("xs")` for a variadic one;
    `op.inputs` / `op.outputs` stay the positional lists."""

    __slots__ = ("kind", "inputs", "outputs", "attrs", "seq", "graph", "loc")

    def __init__(self, kind: str, inputs: list[Value], outputs: list[Value],
                 attrs: dict[str, AttrValue] | None = None):
        self.kind = kind
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.attrs = dict(attrs or {})
        self.seq = 0.0
        self.graph: Graph | None = None
        self.loc: tuple[int, int] | None = None
        for v in self.outputs:
            v.producer = self

    @property
    def output(self) -> Value:
        """The single result (raises if the op has several)."""
        if len(self.outputs) != 1:
            raise ValueError(f"op '{self.kind}' has {len(self.outputs)} results")
        return self.outputs[0]

    def operand(self, name: str) -> Value | None:
        """The operand called `name` in the op's schema; None for an absent optional one."""
        return _single(self, signature(self.kind).operands, self.inputs, name)

    def result(self, name: str) -> Value | None:
        """The result called `name` in the op's schema; None for an absent optional one."""
        return _single(self, signature(self.kind).results, self.outputs, name)

    def operands(self, name: str) -> list[Value]:
        """The values of the variadic operand `name` (e.g. concat's `xs`)."""
        slot = signature(self.kind).operands.slot(name, len(self.inputs))
        if not isinstance(slot, slice):
            raise ValueError(f"operand '{name}' of '{self.kind}' is not variadic: use op.operand")
        return self.inputs[slot]

    def format(self, attrs: dict[str, AttrValue] | None = None) -> str:
        """The op as a line of IR text, with `attrs` (default: all of them) in braces."""
        attrs = self.attrs if attrs is None else attrs
        braces = (" {" + ", ".join(f"{k} = {format_attr(v)}" for k, v in attrs.items()) + "}"
                  if attrs else "")
        return (f"{', '.join(v.ref for v in self.outputs)} = {self.kind}"
                f"({', '.join(v.ref for v in self.inputs)}){braces} : "
                f"{', '.join(str(v.type) for v in self.outputs)}")

    def __repr__(self) -> str:
        return self.format()


def _single(op: Op, names: Names, values: list[Value], name: str) -> Value | None:
    slot = names.slot(name, len(values))
    if isinstance(slot, slice):
        how = "op.operands(name)" if names.side == "operand" else "op.outputs"
        raise ValueError(f"{names.side} '{name}' of '{op.kind}' is variadic: use {how}")
    return None if slot is None else values[slot]


def format_attr(v: AttrValue) -> str:
    """An attribute value spelled as in the IR text format."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.value
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


@dataclass
class Graph:
    """A flat SSA graph with named inputs, parameters, ops and outputs."""

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    params: dict[str, Value] = field(default_factory=dict)
    outputs: list[Value] = field(default_factory=list)
    _ops: dict[Op, None] = field(default_factory=dict, repr=False)
    _dirty: bool = field(default=False, repr=False)
    _names: set[str] = field(default_factory=set, repr=False)
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _next_seq: float = field(default=0.0, repr=False)

    def __setattr__(self, name: str, value) -> None:
        if name == "outputs" and not isinstance(value, OutputList):
            value = OutputList(value)
        object.__setattr__(self, name, value)

    # ---- construction -------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        """A value name not yet used in this graph."""
        if hint and not VALUE_NAME.fullmatch(hint):
            hint = re.sub(r"[^A-Za-z0-9_.]", "_", hint)
        if hint and hint not in self._names:
            self._names.add(hint)
            return hint
        while True:
            name = f"{hint}_{next(self._counter)}" if hint else str(next(self._counter))
            if name not in self._names:
                self._names.add(name)
                return name

    def claim_name(self, name: str) -> None:
        check_name(name, "value")
        if name in self._names:
            raise ValueError(f"value name '%{name}' is already defined")
        self._names.add(name)

    def add_input(self, name: str, type: TensorType) -> Value:
        self.claim_name(name)
        v = Value(name, type)
        self.inputs.append(v)
        return v

    def add_param(self, name: str, type: TensorType) -> Value:
        check_name(name, "parameter")
        if name in self.params:
            raise ValueError(f"parameter '@{name}' is already defined")
        v = Value(name, type, is_param=True)
        self.params[name] = v
        return v

    def append(self, op: Op) -> Op:
        """Add `op` after every op currently in the graph."""
        self._next_seq += 1.0
        return self._attach(op, self._next_seq)

    def insert_before(self, anchor: Op, ops: list[Op], _respaced: bool = False) -> list[Op]:
        """Insert `ops` (in order) before `anchor`, each after its own operands."""
        prev = -float("inf")
        for op in ops:
            if op.graph is not None:
                continue
            producers = [v.producer for v in op.inputs
                         if v.producer is not None and v.producer.graph is self]
            late = [p for p in producers if p.seq >= anchor.seq]
            if late:
                raise ValueError(f"cannot insert '{op.kind}' before '{anchor.kind}': its operand "
                                 f"{late[0].outputs[0].ref} is defined after the insertion point")
            lo = max([prev] + [p.seq for p in producers])
            if lo == -float("inf"):
                lo = anchor.seq - 1.0
            seq = (lo + anchor.seq) / 2
            if not lo < seq < anchor.seq:  # float keys exhausted: respace once and retry
                if _respaced:
                    raise RuntimeError("op position keys exhausted after respacing")
                self.renumber()
                return self.insert_before(anchor, ops, _respaced=True)
            self._attach(op, seq)
            prev = seq
        self._dirty = True
        return ops

    def _attach(self, op: Op, seq: float) -> Op:
        op.seq = seq
        op.graph = self
        self._ops[op] = None
        for v in op.inputs:
            v.users[op] = None
        for v in op.outputs:
            if v.name not in self._names:
                self._names.add(v.name)
        return op

    def is_dead(self, op: Op) -> bool:
        """No result of `op` is used by another op or is a graph output."""
        return all(not v.users and v not in self.outputs for v in op.outputs)

    def single_user(self, v: Value) -> Op | None:
        """The only op using `v`, or None if `v` has several users or is a graph output."""
        if len(v.users) != 1 or v in self.outputs:
            return None
        return next(iter(v.users))

    def erase(self, op: Op) -> None:
        """Remove `op`; its results must have no remaining users."""
        for v in op.outputs:
            if v.users:
                users = ", ".join(u.kind for u in v.users)
                raise ValueError(f"cannot erase '{op.kind}': result {v.ref} still used by {users}")
            if v in self.outputs:
                raise ValueError(f"cannot erase '{op.kind}': result {v.ref} is a graph output")
        for v in op.inputs:
            v.users.pop(op, None)
        del self._ops[op]
        op.graph = None

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every user of `old` (and the graph outputs) use `new` instead.

        `new` must have `old`'s type (a symbolic dim may stand for a known one): a rewrite
        that changes a value's dtype, rank or a known dim is a bug, caught here."""
        if old is new:
            return
        if not types_compatible(old.type, new.type):
            raise ValueError(f"replacing {old.ref}: {old.type} by {new.ref}: {new.type} "
                             "changes its type")
        for user in list(old.users):
            for i, v in enumerate(user.inputs):
                if v is old:
                    user.inputs[i] = new
            new.users[user] = None
        old.users.clear()
        self.outputs.replace(old, new)

    # ---- queries --------------------------------------------------------
    @property
    def ops(self) -> list[Op]:
        """Ops in program order."""
        if self._dirty:
            ordered = sorted(self._ops, key=lambda o: o.seq)
            self._ops = dict.fromkeys(ordered)
            self._dirty = False
        return list(self._ops)

    def __contains__(self, op: Op) -> bool:
        return op in self._ops

    def __len__(self) -> int:
        return len(self._ops)

    def renumber(self) -> None:
        """Reset position keys to 1..n (keeps float keys from growing dense)."""
        for i, op in enumerate(self.ops, 1):
            op.seq = float(i)
        self._next_seq = float(len(self._ops))

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.params.values()
        for op in self.ops:
            yield from op.outputs

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self._ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts
