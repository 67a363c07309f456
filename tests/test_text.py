"""Text format: exact round-trip (files and generated graphs) and located parse errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmc.compiler import Builder, IRSyntaxError, parse, print_graph
from llmc.compiler.text import split_cases
from llmc.compiler.verifier import verify

FILECHECK_DIR = Path(__file__).parent / "filecheck"
LLMC = [sys.executable, "-m", "llmc.cli"]


def ir_cases(areas: tuple[str, ...] = ("generic", "fusion", "vendor")):
    """Every IR case of the FileCheck files in `areas` (subfolders of tests/filecheck)."""
    for path in sorted(p for a in areas for p in (FILECHECK_DIR / a).rglob("*.llmc")):
        for start, chunk in split_cases(path.read_text()):
            body = "\n".join(ln for ln in chunk.splitlines() if ln.strip() and not ln.lstrip().startswith("//"))
            if body:
                yield pytest.param(body + "\n", id=f"{path.relative_to(FILECHECK_DIR)}:{start + 1}")


@pytest.mark.parametrize("text", list(ir_cases()))
def test_filecheck_inputs_round_trip(text):
    g = parse(text)
    verify(g)
    assert print_graph(g) == text


# ---- generated graphs -------------------------------------------------------------

UNARY = ["neg", "exp", "tanh", "silu", "sigmoid", "softmax"]
BINARY = ["add", "mul", "sub", "maximum"]


@st.composite
def graphs(draw):
    b = Builder(draw(st.sampled_from(["g", "main", "model_1"])))
    rows = draw(st.sampled_from([2, 3, "batch"]))
    cols = draw(st.sampled_from([4, 6]))
    vals = [b.input("x", "f32", [rows, cols])]
    if draw(st.booleans()):
        vals.append(b.input("y", "f32", [rows, cols]))
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "linear", "split", "const", "norm", "cast",
                                     "gelu", "slice", "special"]))
        x = draw(st.sampled_from(vals))
        if kind == "unary":
            vals.append(b.op(draw(st.sampled_from(UNARY)), x))
        elif kind == "binary":
            vals.append(b.op(draw(st.sampled_from(BINARY)), x, draw(st.sampled_from(vals))))
        elif kind == "gelu":
            vals.append(b.gelu(x, approximate=draw(st.sampled_from(["none", "tanh"]))))
        elif kind == "slice":
            start = draw(st.integers(-cols, cols - 1))
            tail = b.slice(x, axes=[-1], starts=[start], ends=[2**63 - 1])
            head = b.slice(x, axes=[1], starts=[0], ends=[start % cols])
            vals.append(b.concat(tail, head, axis=-1))  # a rotation: shape kept
        elif kind == "special":
            v = draw(st.sampled_from([float("inf"), -float("inf"), float("nan"), -0.0, 1e-300, -7]))
            vals.append(b.maximum(x, b.constant(value=[v], shape=[])))
        elif kind == "linear":
            w = b.param(draw(st.sampled_from([f"layers.{i}.weight", f"model/layers-{i}.w"])),
                        "f32", [cols, cols])
            vals.append(b.linear(x, w, transpose_w=draw(st.booleans())))
        elif kind == "split":
            a, c = b.split(x, axis=-1, sizes=[cols // 2, cols // 2])
            vals.append(b.concat(c, a, axis=1))
        elif kind == "const":
            v = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=1))
            vals.append(b.add(x, b.constant(value=v, shape=[cols])))
        elif kind == "norm":
            w = b.param(f"norm.{i}", "f32", [cols])
            vals.append(b.rms_norm(x, w, epsilon=draw(st.sampled_from([1e-5, 1e-6, 0.001]))))
        else:
            vals.append(b.cast(b.cast(x, dtype=draw(st.sampled_from(["f16", "bf16", "f32"]))), dtype="f32"))
    b.output(*draw(st.lists(st.sampled_from(vals[1:] or vals), min_size=1, max_size=3, unique_by=id)))
    return b.graph


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_generated_graphs_round_trip(g):
    verify(g)
    text = print_graph(g)
    g2 = parse(text)
    verify(g2)
    assert print_graph(g2) == text
    assert [o.kind for o in g2.ops] == [o.kind for o in g.ops]
    assert [print_graph(g2)] == [print_graph(parse(print_graph(g2)))]


# ---- malformed input -------------------------------------------------------------

GOOD = """graph @t(%x: f32[2, 4]) {
  param @w: f32[8, 4]
  %y = linear(%x, @w) : f32[2, 8]
  return %y
}
"""

MALFORMED = {
    "missing_percent": (GOOD.replace("%y = linear", "y = linear"), 3, "unexpected"),
    "unknown_op": (GOOD.replace("linear(", "lineer("), 3, "unknown op 'lineer'"),
    "wrong_arity": (GOOD.replace("linear(%x, @w)", "linear(%x)"), 3, "takes 2 to 3 operands, got 1"),
    "type_mismatch": (GOOD.replace(": f32[2, 8]", ": f32[2, 9]"), 3, "type mismatch for %y"),
    "undefined_value": (GOOD.replace("linear(%x", "linear(%z"), 3, "undefined value %z"),
    "duplicate_definition": (GOOD.replace("  return %y", "  %y = neg(%x) : f32[2, 4]\n  return %y"),
                             4, "%y is defined twice"),
    "bad_attr_type": (GOOD.replace("linear(%x, @w)", "linear(%x, @w) {transpose_w = 3}"), 3,
                      "'transpose_w' expects bool"),
    "truncated": (GOOD[: GOOD.index("return")], 4, "unexpected end of file"),
    "deep_attr_nesting": (GOOD.replace("linear(%x, @w)", "linear(%x, @w) {transpose_w = "
                                       + "[" * 5000 + "]" * 5000 + "}"), 3,
                          "attribute value nested deeper than 16 lists"),
    "empty": ("", None, "empty input"),
    "binary_junk": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", None, "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ir_is_located(case):
    text, line, msg = MALFORMED[case]
    with pytest.raises(IRSyntaxError) as e:
        parse(text, "bad.llmc")
    err = e.value
    assert msg in err.msg
    assert err.line == line
    first = str(err).splitlines()[0]
    assert first.startswith(f"bad.llmc:{line}:" if line else "bad.llmc:")
    if line:
        assert str(err).splitlines()[-1].strip() == "^"


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_cli_malformed_exit_2_without_traceback(case, tmp_path):
    text, line, msg = MALFORMED[case]
    f = tmp_path / "bad.llmc"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    r = subprocess.run(LLMC + ["opt", str(f)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(str(f)) and "error:" in first and msg in first


def test_caret_points_at_the_column():
    with pytest.raises(IRSyntaxError) as e:
        parse(GOOD.replace("linear(", "lineer("), "f.llmc")
    lines = str(e.value).splitlines()
    src, caret = lines[1], lines[2]
    assert src[caret.index("^"):].startswith("lineer")


def test_attr_nesting_up_to_the_limit_reaches_the_schema_check():
    """16 nested lists parse (the op then rejects the value); 17 are refused, located at
    the 17th '['."""
    ok = GOOD.replace("linear(%x, @w)", "linear(%x, @w) {transpose_w = " + "[" * 16 + "]" * 16 + "}")
    with pytest.raises(IRSyntaxError, match="'transpose_w' expects bool"):
        parse(ok)
    deep = ok.replace("[" * 16, "[" * 17).replace("]" * 16, "]" * 17)
    with pytest.raises(IRSyntaxError, match="nested deeper than 16") as e:
        parse(deep)
    assert e.value.column == deep.splitlines()[2].index("[") + 17


def test_long_source_lines_are_excerpted_around_the_caret():
    text = GOOD.replace("linear(%x, @w)", "linear(%x, @w) {transpose_w = " + "[" * 3000 + "}")
    with pytest.raises(IRSyntaxError) as e:
        parse(text, "f.llmc")
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and all(len(ln) < 120 for ln in lines)
    src, caret = lines[1], lines[2]
    assert src[caret.index("^")] == "}" and src.strip().startswith("...")

