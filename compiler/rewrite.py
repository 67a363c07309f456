"""Declarative pattern rewriting driven to a fixed point by a worklist.

    x = P.var("x")
    neg_neg = rule(P("neg", P("neg", x)), lambda x: x)

    @rule(P(("add", "sub"), x, P("constant", name="c")), check=lambda c: is_zero(c.output))
    def add_zero(x):
        return x

A pattern is a tree of `P` nodes matching the producers of values. Bound names
(`P.var("x")` or `name=`) are values for vars and ops for named op patterns; a var
bound twice must bind the same value. A rule's function and its check receive just the
bindings they name as parameters, plus `rw` (the Rewriter) and the owning pass's
options when they name those. The function returns the replacement value(s) for the
root op's results, or None (no match); new ops are made with `rw.op(...)` before the root.

A replacement that fails to build (an OpError: the rule made an ill-typed op) is a bug in
the rule, never a silent non-match: it raises RewriteError naming the rule.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .binding import call_with, check_offered, parameter_names
from .builder import make_op
from .errors import LlmcError
from .ir import Graph, Op, Value
from .ops import get_op
from .ops.registry import OpError
from .passmanager import Option, Pass, define_pass


class RewriteError(LlmcError):
    """A rule built an ill-typed replacement or replaced a value by one of another type."""


class P:
    """A pattern node: an op of `kind` (a name or tuple of names) whose operands match `inputs`.

    `out` selects the matched result by name (or position) for multi-result ops;
    `one_use` requires the value to have a single user; `variadic` matches a prefix of
    the operands."""

    __slots__ = ("kind", "inputs", "name", "attrs", "out", "one_use", "variadic")

    def __init__(self, kind: str | tuple[str, ...] | None, *inputs: "P", name: str | None = None,
                 attrs: dict[str, Any] | None = None, out: str | int | None = None,
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

    def bindings(self) -> set[str]:
        """Every name this pattern binds."""
        names = {self.name} if self.name else set()
        for p in self.inputs:
            names |= p.bindings()
        return names

    def result_of(self, op: Op) -> Value | None:
        """The result of `op` this pattern's root stands for."""
        if isinstance(self.out, str):
            return op.result(self.out)
        i = self.out or 0
        return op.outputs[i] if i < len(op.outputs) else None

    def match(self, v: Value, m: dict[str, Any]) -> bool:
        if self.kind is None:
            return self._bind(m, self.name, v)
        if self.kind == ("@param",):
            return v.is_param and self._bind(m, self.name, v)
        op = v.producer
        if op is None or op.graph is None or op.kind not in self.kind:
            return False
        if self.out is not None and self.result_of(op) is not v:
            return False
        if self.one_use and (len(v.users) > 1 or v in op.graph.outputs):  # 0 users: a root
            return False
        if not all(want(op.attrs.get(k)) if callable(want) else op.attrs.get(k) == want
                   for k, want in self.attrs.items()):
            return False
        if not self._match_inputs(op, m) or not self._bind(m, self.name, op):
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
    """A pattern, an optional check and a rewrite function, each reading only the
    bindings (and `rw`, and pass options) it names as parameters."""

    pattern: P
    fn: Callable[..., Value | tuple[Value | None, ...] | None]
    check: Callable[..., bool] | None = None
    name: str = ""
    fn_args: tuple[str, ...] = field(init=False)
    check_args: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.name or getattr(self.fn, "__name__", "")
        if not self.name or self.name == "<lambda>":
            raise TypeError("a rule made from a lambda needs name=")
        self.fn_args = parameter_names(self.fn, f"rule '{self.name}'")
        self.check_args = (parameter_names(self.check, f"check of rule '{self.name}'")
                           if self.check is not None else ())

    def free_names(self) -> set[str]:
        """Names the rule reads that its pattern does not bind (pass options, `rw`)."""
        return set(self.fn_args + self.check_args) - self.pattern.bindings()

    def try_apply(self, root: Op, rw: "Rewriter", options: Mapping[str, Any]) -> bool:
        v = self.pattern.result_of(root)
        m: dict[str, Any] = {}
        if v is None or not self.pattern.match(v, m):
            return False
        matched = m.pop("@ops", [])
        m.update(options)
        m["rw"] = rw
        if self.check is not None and not call_with(self.check, self.check_args, m):
            return False
        rw.begin(root)
        try:
            res = call_with(self.fn, self.fn_args, m)
            if res is not None:
                rw.commit(root, res, matched)
        except (OpError, ValueError) as e:
            rw.abort()
            raise RewriteError(f"rule '{self.name}' built a wrong replacement for "
                               f"`{root.format()}`: {e}") from e
        if res is None:
            rw.abort()
            return False
        return True


def rule(pattern: P, fn: Callable | None = None, *, check: Callable | None = None,
         name: str = "") -> Any:
    """A Rule: `rule(pattern, fn, check=..., name=...)`, or as a decorator `@rule(pattern)`."""
    if fn is not None:
        return Rule(pattern, fn, check, name)
    return lambda f: Rule(pattern, f, check, name)


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
            if op.graph is not None and self.graph.is_dead(op):
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
            raise ValueError(f"the rewrite returned {len(news)} values "
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


def _index(rules: list[Rule]) -> tuple[dict[str, list[Rule]], list[Rule]]:
    by_kind: dict[str, list[Rule]] = {}
    anywhere: list[Rule] = []
    for r in rules:
        kinds = r.pattern.kind
        if kinds is None or kinds == ("@param",):
            anywhere.append(r)
        else:
            for k in kinds:
                by_kind.setdefault(k, []).append(r)
    return by_kind, anywhere


def apply_rules(g: Graph, rules: Iterable[Rule], options: Mapping[str, Any] | None = None,
                max_rewrites: int = 1_000_000) -> int:
    """Apply rules until none matches; returns the number of rewrites. `options` are the
    owning pass's options, offered to the rules by name."""
    rules = list(rules)
    options = dict(options or {})
    for r in rules:
        check_offered(sorted(r.free_names()), {"rw", *options}, f"rule '{r.name}'")
    by_kind, anywhere = _index(rules)
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
            if r.try_apply(op, rw, options):
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


def rule_pass(name: str, doc: str, rules: Iterable[Rule], *,
              expected: Callable[..., int | None] | None = None,
              options: dict[str, Option] | None = None) -> type[Pass]:
    """Declare and register a pass that applies `rules` to a fixed point (see define_pass
    for `expected` and `options`; the rules may read the options by name)."""
    rules = tuple(rules)
    for r in rules:
        check_offered(sorted(r.free_names()), {"rw", *(options or {})},
                      f"pass '{name}', rule '{r.name}'")
    return define_pass(name, doc, lambda g, options: apply_rules(g, rules, options),
                       expected=expected, options=options)

