"""The IR text format: printer and lark-based parser with located errors.

    graph @tiny(%x: f32[batch, 4]) {
      param @w: f32[8, 4]
      %y = linear(%x, @w) : f32[batch, 8]
      return %y
    }

`print_graph(parse(s)) == s` holds for canonical text (attributes equal to
their defaults are omitted, in schema order). Parameters are printed by name
and type only; their data lives in a weights manifest, never in the IR.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import IRSyntaxError
from .ir import DType, Graph, Op, TensorType, Value, types_compatible
from .ops import get_op
from .ops.registry import OpError

# ---- printer -------------------------------------------------------------------


def non_default_attrs(op: Op) -> dict:
    """The attributes of `op` that differ from their schema defaults, in the op's order."""
    try:
        specs = get_op(op.kind).attrs
    except OpError:
        specs = {}
    return {k: v for k, v in op.attrs.items() if k not in specs or not _same(specs[k].default, v)}


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def print_op(op: Op) -> str:
    """One op as canonical IR text (attributes equal to their defaults left out)."""
    return op.format(non_default_attrs(op))


def print_graph(g: Graph) -> str:
    args = ", ".join(f"{v.ref}: {v.type}" for v in g.inputs)
    lines = [f"graph @{g.name}({args}) {{"]
    lines += [f"  param {p.ref}: {p.type}" for p in g.params.values()]
    lines += ["  " + print_op(op) for op in g.ops]
    lines.append("  return " + ", ".join(v.ref for v in g.outputs) if g.outputs else "  return")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- parser --------------------------------------------------------------------


@lru_cache(maxsize=1)
def _lark():
    from lark import Lark

    grammar = (Path(__file__).with_name("llmc.lark")).read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


_EXPECT_NAMES = {
    "VALUE": "a %value", "PARAM": "an @name", "OPNAME": "a name", "DTYPE": "a dtype",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "GRAPH": "'graph'",
    "RETURN": "'return'", "PARAM_KW": "'param'", "INT": "an integer",
    "SIGNED_INT": "an integer", "SIGNED_FLOAT": "a float", "ESCAPED_STRING": "a string",
}


def _expected(tokens) -> str:
    names = sorted({_EXPECT_NAMES.get(t, t.lower().strip("_") if t.isupper() else repr(t))
                    for t in tokens})
    return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")


def decode_text(data: str | bytes, filename: str = "<input>") -> str:
    """UTF-8 text of a file's bytes, or a located error."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IRSyntaxError(f"not UTF-8 text (bad byte at offset {e.start})", filename) from None


def parse(text: str | bytes, filename: str = "<input>") -> Graph:
    """Parse IR text into a verified-shape Graph; raises IRSyntaxError with file:line:col."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

    text = decode_text(text, filename)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise IRSyntaxError("binary data (NUL byte) in IR text", filename, text, line, 1)
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("//"))
    if not body.strip():
        raise IRSyntaxError("empty input: expected 'graph @name(...) { ... }'", filename)
    try:
        tree = _lark().parse(text)
    except UnexpectedEOF as e:
        lines = text.splitlines() or [""]
        raise IRSyntaxError(f"unexpected end of file, expected {_expected(e.expected)}",
                            filename, text, len(lines), len(lines[-1]) + 1) from None
    except UnexpectedToken as e:
        if e.token.type == "$END":
            lines = text.rstrip("\n").splitlines() or [""]
            raise IRSyntaxError(f"unexpected end of file, expected {_expected(e.expected)}",
                                filename, text, len(lines), len(lines[-1]) + 1) from None
        raise IRSyntaxError(f"unexpected {e.token.value!r}, expected {_expected(e.expected)}",
                            filename, text, e.line, e.column) from None
    except UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        hint = " (value names start with '%', parameters with '@')" if ch.isalnum() else ""
        raise IRSyntaxError(f"unexpected character {ch!r}{hint}", filename, text, e.line,
                            e.column) from None
    return _Builder(text, filename).graph(tree.children[0])


# Lists in attribute values nest this deep at most: no op attribute needs more than one
# level, and a bound keeps a hostile file from exhausting the Python stack.
MAX_ATTR_NESTING = 16


class _Builder:
    """Turns the lark tree into a Graph, checking names, arity, attrs and types."""

    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.env: dict[str, Value] = {}

    def err(self, msg: str, node) -> IRSyntaxError:
        line = getattr(node, "line", None) or getattr(getattr(node, "meta", None), "line", None)
        col = getattr(node, "column", None) or getattr(getattr(node, "meta", None), "column", None)
        return IRSyntaxError(msg, self.filename, self.text, line, col)

    def graph(self, node) -> Graph:
        name_tok, *rest = node.children
        g = Graph(name=name_tok[1:])
        for child in rest:
            if child is None:
                continue
            kind = child.data
            if kind == "arg":
                vtok, ty = child.children
                self.define(vtok)
                v = g.add_input(vtok[1:], self.type(ty))
                self.env[vtok] = v
            elif kind == "param":
                ptok, ty = child.children
                if ptok in self.env:
                    raise self.err(f"parameter {ptok} is defined twice", ptok)
                self.env[ptok] = g.add_param(ptok[1:], self.type(ty))
            elif kind == "stmt":
                self.stmt(g, child)
            elif kind == "ret":
                g.outputs = [self.use(t) for t in child.children if t is not None]
        return g

    def define(self, tok) -> None:
        if tok in self.env:
            raise self.err(f"value {tok} is defined twice", tok)

    def use(self, tok) -> Value:
        try:
            return self.env[tok]
        except KeyError:
            what = "parameter" if tok.startswith("@") else "value"
            raise self.err(f"use of undefined {what} {tok}", tok) from None

    def stmt(self, g: Graph, node) -> None:
        results, optok, operands, attrs_node, types = self._split_stmt(node)
        try:
            opdef = get_op(str(optok))
        except OpError as e:
            raise self.err(str(e), optok) from None
        ins = [self.use(t) for t in operands]
        try:
            opdef.check_arity(len(ins))
        except OpError as e:
            raise self.err(str(e), optok) from None
        attrs = self._attrs(opdef, attrs_node, optok)
        try:
            inferred = opdef.infer_types([v.type for v in ins], attrs)
        except OpError as e:
            raise self.err(str(e), optok) from None
        except (ValueError, OverflowError, ZeroDivisionError) as e:
            raise self.err(f"op '{optok}': invalid operands or attributes ({e})", optok) from None
        if len(results) != len(types):
            raise self.err(f"{len(results)} results but {len(types)} types", results[0])
        if len(inferred) != len(results):
            raise self.err(f"op '{optok}' produces {len(inferred)} results, "
                           f"{len(results)} given", results[0])
        outs = [self._result(g, tok, declared, inf, optok)
                for tok, declared, inf in zip(results, types, inferred)]
        op = Op(str(optok), ins, outs, attrs)
        op.loc = (optok.line, optok.column)
        g.append(op)

    def _split_stmt(self, node):
        """(result tokens, op token, operand tokens, attrs node or None, result types)."""
        ch = node.children
        i = 0
        while ch[i].type == "VALUE":
            i += 1
        results, optok = ch[:i], ch[i]
        i += 1
        operands = []
        while i < len(ch) and (ch[i] is None or getattr(ch[i], "type", None) in ("VALUE", "PARAM")):
            if ch[i] is not None:
                operands.append(ch[i])
            i += 1
        attrs_node = None
        if i < len(ch) and getattr(ch[i], "data", None) == "attrs":
            attrs_node = ch[i]
            i += 1
        return results, optok, operands, attrs_node, [self.type(t) for t in ch[i:]]

    def _attrs(self, opdef, attrs_node, optok) -> dict:
        """The op's attributes, checked against its schema, each error at its attribute."""
        given = [a for a in (attrs_node.children if attrs_node is not None else []) if a is not None]
        raw = {}
        for a in given:
            key, val = a.children
            if key in raw:
                raise self.err(f"attribute '{key}' given twice", key)
            raw[str(key)] = self.attrval(val)
        try:
            return opdef.normalize_attrs(raw)
        except OpError as e:
            bad = next((a.children[0] for a in given if str(a.children[0]) in str(e)), optok)
            raise self.err(str(e), bad) from None

    def _result(self, g: Graph, tok, declared: TensorType, inferred: TensorType, optok) -> Value:
        if not types_compatible(declared, inferred):
            raise self.err(f"type mismatch for {tok}: declared {declared} but "
                           f"'{optok}' infers {inferred}", tok)
        self.define(tok)
        try:
            g.claim_name(tok[1:])
        except ValueError as e:
            raise self.err(str(e), tok) from None
        v = Value(tok[1:], declared)
        self.env[tok] = v
        return v

    def attrval(self, node, depth: int = 1):
        kind = node.data
        if kind == "int":
            return self.int64(node.children[0])
        if kind == "float":
            return float(node.children[0])
        if kind == "string":
            try:
                return json.loads(node.children[0])
            except json.JSONDecodeError as e:
                raise self.err(f"bad string escape ({e.msg})", node.children[0]) from None
        if kind == "true":
            return True
        if kind == "false":
            return False
        if kind == "dtype":
            return DType(str(node.children[0]))
        if depth > MAX_ATTR_NESTING:
            raise self.err(f"attribute value nested deeper than {MAX_ATTR_NESTING} lists", node)
        return tuple(self.attrval(c, depth + 1) for c in node.children if c is not None)

    def int64(self, tok) -> int:
        v = int(tok)
        if not -(2**63) <= v < 2**63:
            raise self.err(f"integer {tok} does not fit in 64 bits", tok)
        return v

    def type(self, node) -> TensorType:
        dt, *dims = node.children
        shape = []
        for d in dims:
            if d is None:
                continue
            if d.data == "static_dim":
                shape.append(self.int64(d.children[0]))
            elif d.data == "sym_dim":
                shape.append(str(d.children[0]))
            else:
                shape.append("?")
        return TensorType(DType(str(dt)), tuple(shape))


def parse_file(path: str | Path) -> Graph:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise IRSyntaxError(f"cannot read file: {e.strerror}", str(p)) from None
    return parse(data, str(p))


def split_cases(text: str, marker: str = "// -----") -> list[tuple[int, str]]:
    """Split a multi-case file on marker lines; returns (first line number, text) pairs.

    Each chunk keeps blank lines in place of earlier chunks so error line numbers
    match the original file."""
    out, start, cur = [], 0, []
    lines = text.splitlines(keepends=True)
    for i, ln in enumerate(lines):
        if ln.strip() == marker:
            out.append((start, "\n" * start + "".join(cur)))
            start, cur = i + 1, []
        else:
            cur.append(ln)
    out.append((start, "\n" * start + "".join(cur)))
    return out
