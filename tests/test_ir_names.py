"""Operands and results by the names their op's schema declares, and the IR without
an import of its printer."""

import ast
from pathlib import Path

import pytest

from llmc.compiler import Builder, parse
from llmc.compiler.ops import REGISTRY
from llmc.compiler.signature import Names, signature
from llmc.compiler.text import print_op

ROOT = Path(__file__).resolve().parent.parent


def test_required_and_optional_operands_by_name():
    b = Builder()
    x, w, bias = b.input("x", "f32", [2, 4]), b.param("w", "f32", [3, 4]), b.param("b", "f32", [3])
    with_bias, plain = b.linear(x, w, bias).producer, b.linear(x, w).producer
    assert with_bias.operand("x") is x and with_bias.operand("w") is w
    assert with_bias.operand("bias") is bias
    assert plain.operand("bias") is None and plain.operand("w") is w
    assert plain.result("out") is plain.output


def test_variadic_operands_and_multi_result_names():
    b = Builder()
    a, c = b.input("a", "f32", [2]), b.input("c", "f32", [3])
    cat = b.concat(a, c, a, axis=0).producer
    assert cat.operands("xs") == [a, c, a]
    with pytest.raises(ValueError, match="operand 'xs' of 'concat' is variadic"):
        cat.operand("xs")
    res = b.input("r", "f32", [2, 4])
    out, total = b.add_rms_norm(b.input("y", "f32", [2, 4]), res, b.param("nw", "f32", [4]))
    op = out.producer
    assert op.result("out") is out and op.result("sum") is total
    assert op.operand("residual") is res


def test_unknown_names_list_the_declared_ones():
    b = Builder()
    op = b.neg(b.input("x", "f32", [2])).producer
    with pytest.raises(ValueError, match=r"op 'neg' has no operand 'y' \(operands: x\)"):
        op.operand("y")
    with pytest.raises(ValueError, match=r"op 'neg' has no result 'sum' \(results: out\)"):
        op.result("sum")
    with pytest.raises(ValueError, match="operand 'x' of 'neg' is not variadic"):
        op.operands("x")


def test_an_optional_result_in_the_middle():
    """fused_blha_layer's end variant (flag 2) has no residual_out: the names still land."""
    names = signature("fused_blha_layer").results
    assert names.layout(4) == {"out": 0, "residual_out": 1, "cache_k_out": 2, "cache_v_out": 3}
    assert names.layout(3) == {"out": 0, "residual_out": None, "cache_k_out": 1, "cache_v_out": 2}
    with pytest.raises(ValueError, match="has 2 results"):
        names.layout(2)


def test_every_registered_op_names_what_its_schema_declares():
    for name, opdef in REGISTRY.items():
        sig = signature(name)
        assert sig.operands.names == opdef.inputs and sig.results.names == opdef.outputs, name
        assert all(n.rstrip("?*").isidentifier() for n in opdef.inputs + opdef.outputs), name


def test_names_put_operands_in_declaration_order():
    names = Names("fused_rms_norm", "operand", ("x", "w", "residual?"))
    assert names.positional({"w": 2, "x": 1}) == [1, 2]
    assert names.positional({"w": 2, "x": 1, "residual": 3}) == [1, 2, 3]
    with pytest.raises(ValueError, match="operand 'w' is required"):
        names.positional({"x": 1})
    with pytest.raises(ValueError, match="has no operand 'bias'"):
        names.positional({"x": 1, "w": 2, "bias": 3})
    two = Names("k", "operand", ("x", "a?", "b?"))
    with pytest.raises(ValueError, match="'b' cannot be given without 'a'"):
        two.positional({"x": 1, "b": 3})


def test_bad_signatures_are_refused_when_declared():
    with pytest.raises(ValueError, match="only the last operand may be variadic"):
        Names("k", "operand", ("xs*", "y"))
    with pytest.raises(ValueError, match="share a name"):
        Names("k", "result", ("out", "out?"))


def test_op_repr_is_ir_text_without_the_printer():
    g = parse("graph @g(%x: f32[2, 4]) {\n  %y = softmax(%x) {axis = 0} : f32[2, 4]\n"
              "  %z = softmax(%y) : f32[2, 4]\n  return %z\n}\n")
    first, second = g.ops
    assert repr(first) == print_op(first) == "%y = softmax(%x) {axis = 0} : f32[2, 4]"
    # repr shows every attribute; the printer leaves defaults out.
    assert repr(second) == "%z = softmax(%y) {axis = -1} : f32[2, 4]"
    assert print_op(second) == "%z = softmax(%y) : f32[2, 4]"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_ir_does_not_import_the_text_format_or_the_registry():
    for mod in ("ir.py", "dtypes.py", "outputs.py", "signature.py"):
        imported = _imports(ROOT / "compiler" / mod)
        assert not {i for i in imported if "text" in i or "ops" in i}, (mod, imported)


def test_passes_read_operands_by_name():
    """No pass indexes an op's operand or result list (`.inputs[3]`, `.outputs[1]`)."""
    for path in sorted((ROOT / "passes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
                assert node.value.attr not in ("inputs", "outputs"), (path.name, node.lineno)
