"""The rewriter's contract: rules and checks read only the bindings they name, a broken
replacement is an error naming the pass and rule (never a silent non-match), and a pass
is declared in one call."""

import pytest
from clitools import run_cli

from llmc.compiler import parse, print_graph
from llmc.compiler.passmanager import PASSES, Option, PassManager, define_pass, parse_pipeline
from llmc.compiler.rewrite import P, RewriteError, Rule, apply_rules, rule, rule_pass

NEG2 = "graph @g(%x: f32[2, 4]) {\n  %y = neg(%x) : f32[2, 4]\n  %z = neg(%y) : f32[2, 4]\n  return %z\n}\n"
x = P.var("x")


def test_a_rule_receives_only_the_bindings_it_names():
    seen = []

    def keep_inner(inner):
        seen.append(inner.kind)
        return inner.operand("x")

    r = rule(P("neg", P("neg", x, name="inner"), name="outer"), keep_inner)
    g = parse(NEG2)
    assert apply_rules(g, [r]) == 1
    assert seen == ["neg"] and g.ops == [] and g.outputs[0] is g.inputs[0]


def test_checks_read_bindings_by_name_too():
    never = rule(P("neg", x, name="n"), lambda x: x, check=lambda n, x: n.kind == "exp",
                 name="never")
    g = parse(NEG2)
    assert apply_rules(g, [never]) == 0 and len(g) == 2


def test_a_rule_asking_for_an_unbound_name_is_refused_when_declared():
    r = rule(P("neg", x), lambda x, y: x, name="wants_y")
    with pytest.raises(TypeError, match="rule 'wants_y' asks for y, which it is never given"):
        apply_rules(parse(NEG2), [r])
    with pytest.raises(TypeError, match="pass 'test_wants_y', rule 'wants_y' asks for y"):
        rule_pass("test_wants_y", "never registered", [r])
    assert "test_wants_y" not in PASSES


def test_a_lambda_rule_needs_a_name_and_named_parameters():
    with pytest.raises(TypeError, match="needs name="):
        rule(P("neg", x), lambda x: x)
    with pytest.raises(TypeError, match="must be a plain named parameter"):
        rule(P("neg", x), lambda **kw: None, name="kwargs")


def test_pass_options_reach_the_rules_that_name_them():
    def scaled(rw, x, factor):
        return rw.op("mul", x, rw.op("constant", value=[factor]))

    r = Rule(P("neg", x), scaled, name="scaled")
    g = parse("graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n  return %y\n}\n")
    assert apply_rules(g, [r], {"factor": -3.0}) == 1
    assert "value = [-3.0]" in print_graph(g)


def test_an_ill_typed_replacement_names_the_rule_and_leaves_the_graph_alone():
    bad = rule(P("neg", x), lambda rw, x: rw.op("matmul", x, x), name="bad_matmul")
    g = parse(NEG2)
    before = print_graph(g)
    with pytest.raises(RewriteError, match=r"rule 'bad_matmul' built a wrong replacement for "
                                           r"`%y = neg\(%x\) : f32\[2, 4\]`: op 'matmul'"):
        apply_rules(g, [bad])
    assert print_graph(g) == before


def test_a_replacement_of_another_type_names_the_rule():
    bad = rule(P("neg", x), lambda rw, x: rw.op("reduce_sum", x, axes=[0]), name="shrinks")
    with pytest.raises(RewriteError, match="rule 'shrinks'.*changes its type"):
        apply_rules(parse(NEG2), [bad])


def _register_broken_pass():
    if "test_broken_rule" not in PASSES:
        bad = rule(P("neg", x), lambda rw, x: rw.op("matmul", x, x), name="bad_matmul")
        rule_pass("test_broken_rule", "Always builds an ill-typed op (test only).", [bad])


def test_the_pass_manager_names_the_pass_and_the_rule():
    _register_broken_pass()
    with pytest.raises(Exception) as e:
        PassManager(parse_pipeline("test_broken_rule")).run(parse(NEG2))
    first = str(e.value).splitlines()[0]
    assert first.startswith("pass 'test_broken_rule' failed: rule 'bad_matmul' built a wrong")


def test_cli_broken_rule_exits_2_naming_pass_and_rule(monkeypatch, capsys, tmp_path):
    _register_broken_pass()
    f = tmp_path / "g.llmc"
    f.write_text(NEG2)
    code, out, err = run_cli(monkeypatch, capsys, "opt", f, "--passes", "test_broken_rule")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "pass 'test_broken_rule' failed: rule 'bad_matmul' built a wrong replacement" in \
        err.splitlines()[0]


def test_define_pass_offers_graph_context_and_options_by_name():
    if "test_count_kind" not in PASSES:
        define_pass("test_count_kind", "Counts ops of one kind (test only).",
                    lambda g, kind: sum(op.kind == kind for op in g.ops),
                    expected=lambda options: len(options["kind"]),
                    options={"kind": Option("neg", "the op kind to count")})
    recs = PassManager(parse_pipeline("test_count_kind{kind=neg}")).run(parse(NEG2))
    assert (recs[0].matched, recs[0].expected) == (2, 3)
    assert parse_pipeline("test_count_kind{kind=exp}")[0].spec() == "test_count_kind{kind=exp}"
    with pytest.raises(TypeError, match="pass 'test_x' run asks for h"):
        define_pass("test_x", "never registered", lambda h: 0)
    with pytest.raises(TypeError, match="option name 'g' is reserved"):
        define_pass("test_y", "never registered", lambda g: 0, options={"g": Option(1)})
