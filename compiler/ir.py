"""The graph IR: dtypes, tensor types, SSA values, ops and graphs.

A graph is a flat SSA dataflow graph. Values are produced by exactly one op
(or are graph inputs / parameters) and carry a `TensorType`. Ops keep a
position key (`seq`) so that rewrites can insert and erase in O(1) and the
graph re-sorts itself only when its op list is read after a change.
"""

from __future__ import annotations

import enum
import itertools
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Union

import numpy as np

Dim = Union[int, str]

VALUE_NAME = re.compile(r"[A-Za-z0-9_.]+")  # after '%' in the text format
PARAM_NAME = re.compile(r"[A-Za-z0-9_./\-]+")  # after '@'


def check_name(name: str, kind: str) -> None:
    """Names must be spellable in the text format (see compiler/llmc.lark)."""
    pattern = PARAM_NAME if kind == "parameter" else VALUE_NAME
    if not pattern.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} has characters the IR text format cannot spell "
                         f"(allowed: {pattern.pattern})")


class DType(enum.Enum):
    """Element types. The value is the spelling in the text format."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    f64 = "f64"
    i64 = "i64"
    i32 = "i32"
    i8 = "i8"
    u8 = "u8"
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        """The numpy dtype (bf16 through ml_dtypes)."""
        if self is DType.bf16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(_NP_NAMES[self])

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.f16, DType.bf16, DType.f64)

    @classmethod
    def from_np(cls, dt) -> "DType":
        dt = np.dtype(dt)
        if dt.name == "bfloat16":
            return cls.bf16
        for k, v in _NP_NAMES.items():
            if np.dtype(v) == dt:
                return k
        raise ValueError(f"unsupported numpy dtype {dt}")

    def __repr__(self) -> str:
        return self.value


_NP_NAMES = {
    DType.f32: "float32",
    DType.f16: "float16",
    DType.f64: "float64",
    DType.i64: "int64",
    DType.i32: "int32",
    DType.i8: "int8",
    DType.u8: "uint8",
    DType.bool: "bool",
}


@dataclass(frozen=True)
class TensorType:
    """A tensor type: element dtype and a shape whose dims are ints or symbols."""

    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.value}[{', '.join(str(d) for d in self.shape)}]"


def types_compatible(a: TensorType, b: TensorType) -> bool:
    """Same dtype and rank, and no dim known to differ (symbols match anything)."""
    return (a.dtype is b.dtype and a.rank == b.rank
            and all(x == y or isinstance(x, str) or isinstance(y, str)
                    for x, y in zip(a.shape, b.shape)))


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
    """An operation: kind, operand values, result values and typed attributes."""

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

    def __repr__(self) -> str:
        from .text import print_op

        return print_op(self)


class OutputList(list):
    """A graph's output list with O(1) membership (`v in g.outputs`), which rewrites ask
    for every value they erase; a plain list scan made 80-layer compiles quadratic."""

    def __init__(self, items: Iterable[Value] = ()):
        super().__init__(items)
        self._pos: dict[Value, list[int]] = {}
        for i, v in enumerate(self):
            self._pos.setdefault(v, []).append(i)

    def _recount(self) -> None:
        OutputList.__init__(self, list(self))

    def __contains__(self, v) -> bool:
        return v in self._pos

    def replace(self, old: Value, new: Value) -> None:
        """Put `new` wherever `old` is, in O(occurrences)."""
        for i in self._pos.pop(old, ()):
            super().__setitem__(i, new)
            self._pos.setdefault(new, []).append(i)

    def __reduce__(self):
        return (OutputList, (list(self),))

    def append(self, v: Value) -> None:
        super().append(v)
        self._pos.setdefault(v, []).append(len(self) - 1)

    def extend(self, vs: Iterable[Value]) -> None:
        super().extend(vs)
        self._recount()

    def __iadd__(self, vs):
        self.extend(vs)
        return self

    def __setitem__(self, i, v) -> None:
        super().__setitem__(i, v)
        self._recount()

    def __delitem__(self, i) -> None:
        super().__delitem__(i)
        self._recount()

    def insert(self, i, v: Value) -> None:
        super().insert(i, v)
        self._recount()

    def pop(self, i: int = -1) -> Value:
        v = super().pop(i)
        self._recount()
        return v

    def remove(self, v: Value) -> None:
        super().remove(v)
        self._recount()

    def clear(self) -> None:
        super().clear()
        self._pos = {}


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
