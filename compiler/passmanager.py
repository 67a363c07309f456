"""Passes, the pass registry, pipeline specs and the pass manager with its instruments.

A pass is a small dataclass registered by name; its fields are its options,
spelled `name{opt=v,other=w}` in a pipeline spec. The manager logs each run in
the vendor's format plus what no peer reports:

    --- Running IR pass [dce]  matched 3  ops 120 -> 117  0.41 ms
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from .binding import call_with, check_offered, parameter_names
from .errors import LlmcError, PassError
from .ir import Graph
from .text import print_graph
from .verifier import verify


@dataclass
class PassContext:
    """What a pass may know besides the graph: model facts for expected match counts."""

    model: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pass:
    """Base class. Subclasses set `name`, define option fields and implement `run`
    (or are declared in one call with `define_pass`)."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_option(self.name, f, getattr(self, f.name))

    def run(self, g: Graph, ctx: PassContext) -> int:
        """Transform `g` in place; return the number of matches (rewrites)."""
        raise NotImplementedError

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        """How many matches the model structure predicts (None: no prediction)."""
        return None

    def options(self) -> dict[str, Any]:
        """The option values of this pass instance, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def doc(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def spec(self) -> str:
        """This pass and its non-default options as a pipeline element."""
        opts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                opts.append(f"{f.name}={_fmt_opt(v)}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in PASSES:
        raise ValueError(f"pass '{cls.name}' is registered twice")
    if "__dataclass_fields__" not in cls.__dict__:
        cls = dataclass(cls)
    PASSES[cls.name] = cls
    return cls


def define_pass(name: str, doc: str, run: Callable[..., int], *,
                expected: Callable[..., int | None] | None = None,
                options: dict[str, Option] | None = None) -> type[Pass]:
    """Declare and register a pass in one call.

    `run` and `expected` receive, by the names they declare, the graph `g`, the
    `ctx` (PassContext), each option by its name, and `options` (all of them as a dict);
    `options` maps each option name to its `Option` (default, bound, help)."""
    options = dict(options or {})
    reserved = sorted({"g", "ctx", "options"} & set(options))
    if reserved:
        raise TypeError(f"pass '{name}': option name '{reserved[0]}' is reserved")
    offered = {"g", "ctx", "options", *options}
    run_args = parameter_names(run, f"pass '{name}' run")
    check_offered(run_args, offered, f"pass '{name}' run")
    exp_args = parameter_names(expected, f"pass '{name}' expected") if expected else ()
    check_offered(exp_args, offered, f"pass '{name}' expected")

    def offer(self, g: Graph, ctx: PassContext) -> dict[str, Any]:
        return dict(self.options(), g=g, ctx=ctx, options=self.options())

    def run_method(self, g: Graph, ctx: PassContext) -> int:
        return call_with(run, run_args, offer(self, g, ctx))

    def expected_method(self, g: Graph, ctx: PassContext) -> int | None:
        return None if expected is None else call_with(expected, exp_args, offer(self, g, ctx))

    fields = [(k, type(o.default), o.as_field()) for k, o in options.items()]
    cls_name = "".join(part.title() for part in name.split("_")) + "Pass"
    cls = dataclasses.make_dataclass(cls_name, fields, bases=(Pass,), namespace={
        "name": name, "__doc__": doc, "run": run_method, "expected": expected_method,
        "__module__": getattr(run, "__module__", __name__)})
    return register_pass(cls)


@dataclass(frozen=True)
class Option:
    """A pass option: its default, an optional lower bound and a one-line help."""

    default: Any
    help: str = ""
    min: float | None = None

    def as_field(self) -> Any:
        """A dataclass field holding this option (bound and help as metadata)."""
        return field(default=self.default, metadata={"min": self.min, "help": self.help})


def _fmt_opt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


_TYPE_CHECKS = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
}


def check_option(passname: str, f: dataclasses.Field, value) -> None:
    """An option value of the declared type, within its declared bound, or a LlmcError."""
    typ = _type_name(f)
    ok = _TYPE_CHECKS.get(typ)
    if ok is not None and not ok(value):
        want = "a finite float" if typ == "float" else typ
        raise LlmcError(f"pass '{passname}': option '{f.name}' expects {want}, got {value!r}")
    low = f.metadata.get("min")
    if low is not None and value < low:
        raise LlmcError(f"pass '{passname}': option '{f.name}' must be >= {_fmt_opt(low)}, "
                        f"got {_fmt_opt(value)}")


def _convert(passname: str, f: dataclasses.Field, raw: str):
    typ = _type_name(f)
    try:
        if typ == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        return raw
    except ValueError:
        raise LlmcError(f"pass '{passname}': option '{f.name}' expects {typ}, got '{raw}'") from None


_ELEMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(spec: str) -> list[Pass]:
    """Parse `a,b{opt=1},c` into pass instances (unknown names list the known ones)."""
    passes: list[Pass] = []
    pos = 0
    spec = spec.strip()
    while pos < len(spec):
        m = _ELEMENT.match(spec, pos)
        if not m or m.end() == pos:
            raise LlmcError(f"bad pipeline spec at column {pos + 1}: {spec[pos:]!r}")
        passes.append(make_pass(m.group(1), m.group(2)))
        pos = m.end()
    return passes


def make_pass(name: str, options: str | None = None) -> Pass:
    """An instance of the pass `name` with options parsed from `opt=v,other=w`."""
    cls = PASSES.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, PASSES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LlmcError(f"unknown pass '{name}'{hint}; known passes: {', '.join(sorted(PASSES))}")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for item in filter(None, (s.strip() for s in (options or "").split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            known = ", ".join(fields) or "none"
            raise LlmcError(f"pass '{name}': unknown option '{key}' (options: {known})")
        if key in kwargs:
            raise LlmcError(f"pass '{name}': option '{key}' is given twice")
        kwargs[key] = _convert(name, fields[key], raw.strip())
    return cls(**kwargs)


@dataclass
class PassRecord:
    """What one pass run did."""

    name: str
    matched: int
    expected: int | None
    ops_before: int
    ops_after: int
    ms: float
    skipped: bool = False

    @property
    def mismatch(self) -> bool:
        return self.expected is not None and self.matched != self.expected

    def log_line(self) -> str:
        if self.skipped:
            return f"--- Skipping IR pass [{self.name}]  (disabled)"
        exp = f" (expected {self.expected})" if self.expected is not None else ""
        return (f"--- Running IR pass [{self.name}]  matched {self.matched}{exp}  "
                f"ops {self.ops_before} -> {self.ops_after}  {self.ms:.2f} ms")


@dataclass
class Instruments:
    """Pass-manager instruments (the command-line flags of `llmc opt` / `llmc compile`)."""

    print_ir_before: set[str] = field(default_factory=set)
    print_ir_after: set[str] = field(default_factory=set)
    print_ir_after_all: bool = False
    dump_dir: str | None = None
    disabled: set[str] = field(default_factory=set)
    verify_each: bool = False


class PassManager:
    """Runs an ordered list of passes with logging, instruments and error context."""

    def __init__(self, passes: list[Pass], instruments: Instruments | None = None,
                 log: Callable[[str], None] | None = None,
                 emit_ir: Callable[[str, str], None] | None = None):
        self.passes = passes
        self.inst = instruments or Instruments()
        self.log = log or (lambda s: None)
        self.emit_ir = emit_ir or (lambda header, text: self.log(f"{header}\n{text}"))
        known = {p.name for p in passes}
        for flag, names in (("--disable-pass", self.inst.disabled),
                            ("--print-ir-before", self.inst.print_ir_before),
                            ("--print-ir-after", self.inst.print_ir_after)):
            for n in names:
                if n not in known and n not in PASSES:
                    raise LlmcError(f"{flag}: unknown pass '{n}'; known passes: "
                                    f"{', '.join(sorted(PASSES))}")

    def run(self, g: Graph, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        if self.inst.dump_dir:
            try:
                Path(self.inst.dump_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LlmcError(f"--dump-dir {self.inst.dump_dir}: cannot create: {e.strerror}") from None
            self._dump(0, "input", g)
        for i, p in enumerate(self.passes, 1):
            n_before = len(g)
            if p.name in self.inst.disabled:
                rec = PassRecord(p.name, 0, None, n_before, n_before, 0.0, skipped=True)
                records.append(rec)
                self.log(rec.log_line())
                continue
            if p.name in self.inst.print_ir_before:
                self.emit_ir(f"// ----- IR before [{p.name}] -----", print_graph(g))
            expected = p.expected(g, ctx)
            t0 = time.perf_counter()
            try:
                matched = p.run(g, ctx)
                if self.inst.verify_each:
                    verify(g)
            except Exception as e:
                done = ", ".join(r.name for r in records) or "none"
                raise PassError(f"pass '{p.spec()}' failed: {e}\n  passes already run: {done}") from e
            ms = (time.perf_counter() - t0) * 1e3
            rec = PassRecord(p.name, int(matched), expected, n_before, len(g), ms)
            records.append(rec)
            self.log(rec.log_line())
            if rec.mismatch:
                self.log(f"WARNING: pass [{p.name}] matched {rec.matched} but the model structure "
                         f"predicts {rec.expected}: the graph is not what this pass was written for")
            if self.inst.print_ir_after_all or p.name in self.inst.print_ir_after:
                self.emit_ir(f"// ----- IR after [{p.name}] -----", print_graph(g))
            if self.inst.dump_dir:
                self._dump(i, p.name, g)
        return records

    def _dump(self, i: int, name: str, g: Graph) -> None:
        write_atomic(Path(self.inst.dump_dir) / f"{i:03d}_{name}.llmc", print_graph(g))


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write a file so that readers see the old content or the whole new one."""
    path = Path(path)
    if path.is_dir():
        raise LlmcError(f"{path}: is a directory, expected a file path")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise LlmcError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise LlmcError(f"{path}: cannot write: {e.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
