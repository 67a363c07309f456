"""Edge cases found in review: each once misbehaved (wrong result, hang or traceback)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from llmc import api
from llmc.compiler import Builder, IRSyntaxError, parse, print_graph
from llmc.compiler.builder import make_op
from llmc.compiler.errors import LlmcError
from llmc.runtime.reference import run

LLMC = [sys.executable, "-m", "llmc.cli"]


def test_cse_keeps_signed_zero_constants_apart():
    g = parse("""graph @g(%x: f32[1]) {
  %a = constant() {value = [0.0]} : f32[]
  %b = constant() {value = [-0.0]} : f32[]
  %p = div(%x, %a) : f32[1]
  %q = div(%x, %b) : f32[1]
  return %p, %q
}
""")
    api.run_pipeline(g, "cse")
    with np.errstate(divide="ignore"):
        p, q = run(g, {"x": np.ones(1, np.float32)})
    assert p[0] == np.inf and q[0] == -np.inf


@pytest.mark.parametrize("text,msg", [
    ('graph @g(%x: f32[2]) {\n  %y = gelu(%x) {approximate = "\\q"} : f32[2]\n  return %y\n}\n',
     "bad string escape"),
    ("graph @g(%x: f32[4]) {\n  %y = slice(%x) {axes = [0], starts = [0], ends = [4], steps = [0]} : f32[4]\n"
     "  return %y\n}\n", "step cannot be zero"),
    ("graph @g(%x: f32[99999999999999999999999]) {\n  return %x\n}\n", "does not fit in 64 bits"),
    ('graph @g(%x: f32[2]) {\n  %y = gelu(%x) {approximate = "tanhh"} : f32[2]\n  return %y\n}\n',
     "approximate must be"),
    ("graph @g(%x: f32[4, 10], %l: i64[4, 3]) {\n  %y = cross_entropy(%x, %l) : f32[]\n  return %y\n}\n",
     "must have rank 1"),
    ("graph @g(%x: f32[4]) {\n  %y = unsqueeze(%x) {axes = [0, 0]} : f32[1, 1, 4]\n  return %y\n}\n",
     "repeated axis"),
])
def test_bad_ir_is_a_located_error(text, msg):
    with pytest.raises(IRSyntaxError, match=msg) as e:
        parse(text, "x.llmc")
    assert e.value.line is not None


def test_insert_before_rejects_later_operand():
    b = Builder("g")
    x = b.input("x", "f32", [2])
    a = b.neg(x)
    c = b.neg(a)
    b.output(c)
    g = b.graph
    first = g.ops[0]
    with pytest.raises(ValueError, match="defined after the insertion point"):
        g.insert_before(first, [make_op(g, "neg", [c], {})])


def test_unspellable_names_are_rejected_or_sanitised():
    b = Builder("g")
    with pytest.raises(ValueError, match="cannot spell"):
        b.input("in-put é", "f32", [2])
    x = b.input("x", "f32", [2])
    y = b.neg(x, name="a b")
    b.output(y)
    assert parse(print_graph(b.graph)).ops[0].outputs[0].name == "a_b"


def test_unwritable_outputs_are_clean_errors(tmp_path):
    f = tmp_path / "g.llmc"
    f.write_text("graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n  return %y\n}\n")
    for args in (["-o", str(tmp_path / "missing" / "o.llmc")], ["-o", str(tmp_path)],
                 ["-p", "dce", "--dump-dir", "/proc/nope"]):
        r = subprocess.run(LLMC + ["opt", str(f)] + args, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "error:" in r.stderr, args


def test_outputs_get_the_usual_file_mode(tmp_path):
    out = tmp_path / "o.llmc"
    old = os.umask(0o022)
    try:
        api.write_atomic(out, "x")
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o644


def test_write_atomic_refuses_directory(tmp_path):
    with pytest.raises(LlmcError, match="is a directory"):
        api.write_atomic(tmp_path, "x")


def test_replacing_a_value_by_one_of_another_type_is_refused():
    b = Builder("g")
    x = b.input("x", "f32", [2, 4])
    y = b.neg(x)
    s = b.reduce_sum(x, axes=[0])
    b.output(y)
    with pytest.raises(ValueError, match="changes its type"):
        b.graph.replace_all_uses(y, s)


def test_a_rule_whose_replacement_is_ill_typed_raises_naming_the_rule():
    from llmc.compiler.rewrite import P, RewriteError, apply_rules, rule

    @rule(P("neg", P.var("x")))
    def bad(rw, x):
        return rw.op("matmul", x, x)  # [2, 4] @ [2, 4]: OpError while building

    g = parse("graph @g(%x: f32[2, 4]) {\n  %y = neg(%x) : f32[2, 4]\n  return %y\n}\n")
    with pytest.raises(RewriteError, match="rule 'bad' built a wrong replacement"):
        apply_rules(g, [bad])
    assert [op.kind for op in g.ops] == ["neg"]
