"""The op registry: every op is declared once with its schema, type inference,
numpy reference kernel and traits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import LlmcError
from ..ir import DType, TensorType
from ..signature import declare, signature

REQUIRED = object()


class OpError(LlmcError):
    """A schema or type-inference error for one op."""


# Attribute kinds accepted in schemas (`ints`/`floats` are tuples) and their value checks.
_KIND_CHECKS = {
    "int": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float, np.floating)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, (list, tuple))
    and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v),
    "floats": lambda v: isinstance(v, (list, tuple))
    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
    "dtype": lambda v: isinstance(v, DType),
}


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = REQUIRED

    def coerce(self, op: str, name: str, value):
        """Check `value` against the attr kind; returns the canonical value."""
        k = self.kind
        if k == "dtype" and isinstance(value, str) and value in DType._value2member_map_:
            value = DType(value)
        ok = _KIND_CHECKS[k]
        if not ok(value):
            raise OpError(f"op '{op}': attribute '{name}' expects {k}, got {_describe(value)}")
        if k == "int":
            return int(value)
        if k == "float":
            return float(value)
        if k == "ints":
            return tuple(int(x) for x in value)
        if k == "floats":
            return tuple(float(x) for x in value)
        return value


def _describe(v) -> str:
    if isinstance(v, bool):
        return f"bool {v}"
    if isinstance(v, (tuple, list)):
        return f"list {list(v)!r}"
    return f"{type(v).__name__} {v!r}"


@dataclass
class OpDef:
    """One op: schema, inference, reference kernel and traits.

    `inputs` names the operands and `outputs` the results; a trailing `*` marks a
    variadic one (only the last), a trailing `?` an optional one (see signature.py for
    how names map to positions). `infer(types, attrs)` returns the result types;
    `kernel(arrays, attrs)` returns numpy results.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, AttrSpec]
    infer: Callable[..., list[TensorType]]
    kernel: Callable[..., list[np.ndarray]]
    traits: frozenset[str] = field(default_factory=frozenset)
    doc: str = ""
    # Collectives only (ops/collective.py): the reference over all ranks of a group.
    group_kernel: Callable[[list[list[np.ndarray]], dict], list[list[np.ndarray]]] | None = None

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].endswith("*")

    @property
    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.endswith(("*", "?")))

    def check_arity(self, n: int) -> None:
        lo = self.min_inputs
        hi = None if self.variadic else len(self.inputs)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if hi == lo else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise OpError(f"op '{self.name}' takes {want} operands, got {n}")

    def normalize_attrs(self, attrs: dict) -> dict:
        """Validate attrs against the schema and fill defaults."""
        out = {}
        for k in attrs:
            if k not in self.attrs:
                known = ", ".join(self.attrs) or "none"
                raise OpError(f"op '{self.name}': unknown attribute '{k}' (known: {known})")
        for k, spec in self.attrs.items():
            if k in attrs:
                out[k] = spec.coerce(self.name, k, attrs[k])
            elif spec.default is REQUIRED:
                raise OpError(f"op '{self.name}': missing required attribute '{k}'")
            else:
                out[k] = spec.default
        return out

    def infer_types(self, types: list[TensorType], attrs: dict) -> list[TensorType]:
        self.check_arity(len(types))
        res = self.infer(types, attrs)
        res = list(res) if isinstance(res, (list, tuple)) else [res]
        try:
            signature(self.name).results.layout(len(res))
        except ValueError as e:  # the declared result names cannot name what infer made
            raise OpError(str(e)) from None
        return res

    def run(self, arrays: list[np.ndarray], attrs: dict) -> list[np.ndarray]:
        res = self.kernel(arrays, attrs)
        return list(res) if isinstance(res, (list, tuple)) else [res]


REGISTRY: dict[str, OpDef] = {}


def defop(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...] = ("out",),
          attrs: dict[str, AttrSpec] | None = None, infer: Callable | None = None,
          traits: tuple[str, ...] = ("pure",)):
    """Decorator declaring an op whose reference kernel is the decorated function.

    The kernel is called as `kernel(*arrays, **attrs)`; `infer` as
    `infer(*types, **attrs)`. Both may return one result or a tuple.
    """

    def wrap(fn):
        if name in REGISTRY:
            raise ValueError(f"op '{name}' is declared twice")
        if infer is None:
            raise ValueError(f"op '{name}' needs an infer function")
        declare(name, tuple(inputs), tuple(outputs))
        REGISTRY[name] = OpDef(
            name=name,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            attrs=dict(attrs or {}),
            infer=lambda ts, at: infer(*ts, **at),
            kernel=lambda arrs, at: fn(*arrs, **at),
            traits=frozenset(traits),
            doc=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )
        return fn

    return wrap


def get_op(name: str) -> OpDef:
    """The OpDef for `name`, or an OpError listing close names."""
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise OpError(f"unknown op '{name}'{hint}") from None
