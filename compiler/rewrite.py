"""Declarative pattern rewriting driven to a fixed point by a worklist.

    x, w = P.var("x"), P.var("w")
    @rule(P("add", x, P("constant", name="zero")), check=lambda m: is_zero(m["zero"]))
    def add_zero(rw, x, zero):
        return x

A pattern is a tree of `P` nodes matching the producers of values. Bound names
(`P.var("x")` or `name=`) become the rule function's keyword arguments: values
for vars, ops for named op patterns. A var bound twice must bind the same value.
The rule returns the replacement value(s) for the root op's results, or None
(no match). New ops are created with `rw.op(...)` and placed before the root.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .builder import make_op
from .ir import Graph, Op, Value
from .ops import get_op
from .ops.registry import OpError


class P:
    """A pattern node: an op of `kind` (a name or tuple of names) whose operands match `inputs`."""

    __slots__ = ("kind", "inputs", "name", "attrs", "out", "one_use", "variadic")

    def __init__(self, kind: str | tuple[str, ...] | None, *inputs: "P", name: str | None = None,
                 attrs: dict[str, Any] | None = None, out: int | None = None,
                 one_use: bool = False, variadic: bool = False):
        self.kind = (kind,) if isinstance(kind, str) else kind
        self.inputs = inputs
        self.name = name
        self.attrs = attrs or {}
        self.out = out
        self.one_use = one_use
        self.variadic = variadic

    @staticmethod
    def var(name: str | None = None) -> "P":
        """Matches any value; binds it under `name`."""
        return P(None, name=name)

    @staticmethod
    def param(name: str | None = None) -> "P":
        """Matches a graph parameter."""
        return P(("@param",), name=name)

    def match(self, v: Value, m: dict[str, Any]) -> bool:
        if self.kind is None:
            return self._bind(m, self.name, v)
        if self.kind == ("@param",):
            return v.is_param and self._bind(m, self.name, v)
        op = v.producer
        if op is None or op.graph is None or op.kind not in self.kind:
            return False
        if self.out is not None and (len(op.outputs) <= self.out or op.outputs[self.out] is not v):
            return False
        if self.one_use and (len(v.users) > 1 or v in op.graph.outputs):  # 0 users: a root
            return False
        for k, want in self.attrs.items():
            have = op.attrs.get(k)
            if callable(want) and not want(have):
                return False
            if not callable(want) and have != want:
                return False
        if not self._match_inputs(op, m):
            return False
        if self.name:
            if not self._bind(m, self.name, op):
                return False
        m.setdefault("@ops", []).append(op)
        return True

    def _match_inputs(self, op: Op, m: dict[str, Any]) -> bool:
        ins = op.inputs
        pats = self.inputs
        if self.variadic:
            ins = ins[: len(pats)]
        elif len(ins) != len(pats):
            return False
        if not pats:
            return True
        if len(pats) != 2 or "commutative" not in get_op(op.kind).traits:
            return all(p.match(v, m) for p, v in zip(pats, ins))
        snapshot = {k: list(v) if k == "@ops" else v for k, v in m.items()}
        if pats[0].match(ins[0], m) and pats[1].match(ins[1], m):
            return True
        m.clear()
        m.update(snapshot)
        return pats[0].match(ins[1], m) and pats[1].match(ins[0], m)

    @staticmethod
    def _bind(m: dict[str, Any], name: str | None, obj) -> bool:
        if name is None:
            return True
        if name in m:
            return m[name] is obj
        m[name] = obj
        return True


@dataclass
class Rule:
    """A pattern, an optional check on the bindings, and a rewrite function."""

    pattern: P
    fn: Callable[..., Value | tuple[Value, ...] | None]
    check: Callable[[dict[str, Any]], bool] | None = None
    name: str = ""

    def try_apply(self, root: Op, rw: "Rewriter") -> bool:
        v = root.outputs[self.pattern.out or 0]
        m: dict[str, Any] = {}
        if not self.pattern.match(v, m):
            return False
        if self.check is not None and not self.check(m):
            return False
        matched = m.pop("@ops", [])
        rw.begin(root)
        try:
            res = self.fn(rw, **m)
        except OpError:  # the replacement would be ill-typed: the pattern does not apply
            res = None
        if res is None:
            rw.abort()
            return False
        rw.commit(root, res, matched)
        return True


def rule(pattern: P, check: Callable[[dict[str, Any]], bool] | None = None) -> Callable:
    """Decorator making a Rule from a rewrite function."""

    def wrap(fn):
        return Rule(pattern, fn, check, fn.__name__)

    return wrap


@dataclass
class Rewriter:
    """Creates ops for a rewrite, replaces uses and erases what became dead."""

    graph: Graph
    created: list[Op] = field(default_factory=list)
    changed: list[Op] = field(default_factory=list)
    _anchor: Op | None = None

    def begin(self, anchor: Op) -> None:
        self._anchor = anchor
        self.created = []

    def abort(self) -> None:
        for op in reversed(self.created):
            if op.graph is not None:
                self.graph.erase(op)
        self.created = []

    def op(self, kind: str, *inputs: Value | None, name: str | None = None, **attrs):
        """Create an op before the anchor; returns its result(s)."""
        op = make_op(self.graph, kind, [v for v in inputs if v is not None], attrs, name)
        self.graph.insert_before(self._anchor, [op])
        self.created.append(op)
        return op.outputs[0] if len(op.outputs) == 1 else tuple(op.outputs)

    def commit(self, root: Op, res, matched: Iterable[Op]) -> None:
        news = list(res) if isinstance(res, (tuple, list)) else [res]
        if len(news) != len(root.outputs):
            raise ValueError(f"rewrite of '{root.kind}' returned {len(news)} values "
                             f"for {len(root.outputs)} results")
        for old, new in zip(root.outputs, news):
            if new is not None:
                self.graph.replace_all_uses(old, new)
        self.changed = list(self.created)
        for v in news:
            if v is not None:
                self.changed.extend(v.users)
        erase_dead(self.graph, [root, *matched])


def erase_dead(g: Graph, candidates: Iterable[Op]) -> int:
    """Erase candidate ops (and their now-dead producers among candidates) with no uses."""
    cand = {op for op in candidates if op.graph is g}
    n = 0
    changed = True
    while changed:
        changed = False
        for op in list(cand):
            if op.graph is g and g.is_dead(op):
                g.erase(op)
                cand.discard(op)
                n += 1
                changed = True
    return n


def apply_rules(g: Graph, rules: list[Rule], max_rewrites: int = 1_000_000) -> int:
    """Apply rules until none matches; returns the number of rewrites."""
    by_kind: dict[str, list[Rule]] = {}
    anywhere: list[Rule] = []
    for r in rules:
        kinds = r.pattern.kind
        if kinds is None or kinds == ("@param",):
            anywhere.append(r)
        else:
            for k in kinds:
                by_kind.setdefault(k, []).append(r)
    rw = Rewriter(g)
    work = deque(g.ops)
    queued = set(work)
    count = 0
    while work:
        op = work.popleft()
        queued.discard(op)
        if op.graph is not g:
            continue
        for r in by_kind.get(op.kind, []) + anywhere:
            if r.try_apply(op, rw):
                count += 1
                if count >= max_rewrites:
                    raise RuntimeError(f"rewrite limit {max_rewrites} reached (rule '{r.name}')")
                for o in rw.changed:
                    if o not in queued and o.graph is g:
                        work.append(o)
                        queued.add(o)
                break
    g.renumber()
    return count
