"""The verifier: types, single definition, use-before-def, dangling values, attr schemas."""

from __future__ import annotations

from .errors import VerifyError
from .ir import Graph, Value, types_compatible
from .ops import get_op
from .ops.registry import OpError
from .text import print_op


def verify(g: Graph) -> None:
    """Raise VerifyError naming the offending op and value, or return None."""
    defined: set[int] = set()
    names: dict[str, Value] = {}

    def define(v: Value, where: str) -> None:
        if id(v) in defined:
            raise VerifyError(f"{v.ref} is defined twice ({where})")
        other = names.get(v.ref)
        if other is not None:
            raise VerifyError(f"two values named {v.ref} ({where})")
        defined.add(id(v))
        names[v.ref] = v

    for v in g.inputs:
        define(v, "graph input")
    for name, p in g.params.items():
        if p.name != name or not p.is_param:
            raise VerifyError(f"parameter table entry '{name}' holds {p.ref}")
        define(p, "parameter")
    for op in g.ops:
        where = f"in `{print_op(op)}`"
        for i, v in enumerate(op.inputs):
            if id(v) not in defined:
                later = v.producer is not None and v.producer in g
                why = "used before its definition" if later else "not defined in the graph"
                raise VerifyError(f"operand {i} {v.ref} of '{op.kind}' is {why} {where}")
            if op not in v.users:
                raise VerifyError(f"use list of {v.ref} misses '{op.kind}' {where}")
        try:
            opdef = get_op(op.kind)
            opdef.check_arity(len(op.inputs))
            attrs = opdef.normalize_attrs(op.attrs)
            inferred = opdef.infer_types([v.type for v in op.inputs], attrs)
        except OpError as e:
            raise VerifyError(f"{e} {where}") from None
        if attrs != op.attrs:
            raise VerifyError(f"attributes of '{op.kind}' are not normalised {where}")
        if len(inferred) != len(op.outputs):
            raise VerifyError(f"'{op.kind}' must produce {len(inferred)} results {where}")
        for v, t in zip(op.outputs, inferred):
            if v.producer is not op:
                raise VerifyError(f"{v.ref} does not point back to its producer {where}")
            if not types_compatible(v.type, t):
                raise VerifyError(f"{v.ref} has type {v.type} but '{op.kind}' infers {t} {where}")
            define(v, where)
    for v in g.outputs:
        if id(v) not in defined:
            raise VerifyError(f"graph output {v.ref} is not defined in the graph")
