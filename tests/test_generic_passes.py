"""Numeric golden tests of the generic passes, and the pass manager's instruments."""

import json
import subprocess
import sys

import numpy as np
import pytest

from golden import NonFiniteReference, check_pass_numerics
from llmc import api
from llmc.compiler import PassError, parse, print_graph
from llmc.compiler.errors import LlmcError
from llmc.compiler.passmanager import Instruments, parse_pipeline
from llmc.demo import llama_shaped_graph
from hypothesis import HealthCheck, given, settings
from test_text import graphs, ir_cases

DIMS = {"batch": 2, "seq": 5}


@pytest.mark.parametrize("pipeline", ["dce", "cse", "canonicalize", "constant_fold",
                                      "canonicalize,cse,dce,constant_fold"])
def test_llama_graph_numerics_preserved(pipeline):
    g = llama_shaped_graph(layers=2)
    after = check_pass_numerics(g, pipeline, DIMS, int_high={"input_ids": 256, "position_ids": 16})
    assert len(after) <= len(g)


# Golden cases whose graph is not finite on N(0, 1) inputs, by graph name, with the reason;
# they run on positive inputs instead (test_positive_input_cases_need_them keeps this honest).
NEEDS_POSITIVE_INPUTS = {
    "different_operands": "rsqrt(mean(x * z)) is NaN wherever mean(x * z) < 0",
}


def positive_inputs(g, dims, seed=0):
    """Random inputs with every float in [0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    return {v.name: rng.uniform(0.5, 1.5, [dims.get(d, d) for d in v.type.shape]).astype(
        v.type.dtype.np) for v in g.inputs if v.type.dtype.is_float}


# The vendor cases are inference-form graphs whose inputs (block tables, sequence lengths)
# must be consistent, which random draws are not; their numerics live in test_fusion_passes.
@pytest.mark.parametrize("text", list(ir_cases(("generic", "fusion"))))
@pytest.mark.parametrize("pipeline", ["dce", "cse", "canonicalize", "constant_fold"])
def test_filecheck_cases_numerics_preserved(text, pipeline):
    g = parse(text)
    dims = {d: 3 for v in g.inputs for d in v.type.shape if isinstance(d, str)}
    pinned = positive_inputs(g, dims) if g.name in NEEDS_POSITIVE_INPUTS else None
    check_pass_numerics(g, pipeline, dims, int_high={v.name: 2 for v in g.inputs}, inputs=pinned)


def test_positive_input_cases_need_them():
    """Each listed case exists, and is not finite on the inputs every other case gets."""
    cases = {parse(p.values[0]).name: p.values[0] for p in ir_cases(("generic", "fusion"))}
    for name, reason in NEEDS_POSITIVE_INPUTS.items():
        assert name in cases, f"@{name} is listed but no golden case has that name"
        g = parse(cases[name])
        dims = {d: 3 for v in g.inputs for d in v.type.shape if isinstance(d, str)}
        with pytest.raises(NonFiniteReference):
            check_pass_numerics(g, "dce", dims)
        assert reason


def test_generic_passes_do_real_work():
    g = llama_shaped_graph(layers=3)
    records = api.run_pipeline(g, "canonicalize,cse,dce")
    matched = {r.name: r.matched for r in records}
    assert matched["canonicalize"] == 9  # 3 reshape chains + 6 identity casts per 3 layers
    assert matched["cse"] == 5  # 6 identical position casts (2 per layer) become 1
    assert matched["dce"] == 3  # one dead neg per layer


def test_pipeline_spec_parsing_and_errors():
    (p,) = parse_pipeline("constant_fold{max_elements=16}")
    assert p.max_elements == 16 and p.spec() == "constant_fold{max_elements=16}"
    with pytest.raises(LlmcError, match="unknown pass 'dcee'.*did you mean dce"):
        parse_pipeline("dcee")
    with pytest.raises(LlmcError, match="unknown option 'bogus'"):
        parse_pipeline("dce{bogus=1}")
    with pytest.raises(LlmcError, match="expects int"):
        parse_pipeline("constant_fold{max_elements=lots}")


def test_error_inside_pass_names_pass_and_history():
    from llmc.compiler.passmanager import PASSES, Pass, register_pass

    if "explode" not in PASSES:
        @register_pass
        class Explode(Pass):
            """Always fails (test only)."""

            name = "explode"

            def run(self, g, ctx):
                raise ValueError("boom")

    g = llama_shaped_graph(layers=1)
    with pytest.raises(PassError) as e:
        api.run_pipeline(g, "dce,cse,explode")
    assert "pass 'explode' failed: boom" in str(e.value)
    assert "passes already run: dce, cse" in str(e.value)


def test_instruments(tmp_path):
    g = llama_shaped_graph(layers=1)
    logs, irs = [], []
    inst = Instruments(print_ir_after={"cse"}, print_ir_before={"dce"}, dump_dir=str(tmp_path),
                       disabled={"canonicalize"}, verify_each=True)
    recs = api.run_pipeline(g, "canonicalize,cse,dce", inst, log=logs.append,
                            emit_ir=lambda h, t: irs.append(h))
    assert recs[0].skipped and logs[0].startswith("--- Skipping IR pass [canonicalize]")
    assert logs[1].startswith("--- Running IR pass [cse]  matched")
    assert irs == ["// ----- IR after [cse] -----", "// ----- IR before [dce] -----"]
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["000_input.llmc", "002_cse.llmc", "003_dce.llmc"]  # skipped passes dump nothing
    assert parse((tmp_path / "003_dce.llmc").read_text()).ops  # dumps are valid IR
    with pytest.raises(LlmcError, match="--disable-pass: unknown pass 'nope'"):
        api.run_pipeline(g, "dce", Instruments(disabled={"nope"}))


def test_cli_opt_json_and_dot(tmp_path):
    f = tmp_path / "g.llmc"
    f.write_text(print_graph(llama_shaped_graph(layers=1)))
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "opt", str(f), "-p", "canonicalize,cse,dce",
                        "--json"], capture_output=True, text=True, check=True)
    doc = json.loads(r.stdout)
    assert [p["name"] for p in doc["passes"]] == ["canonicalize", "cse", "dce"]
    assert doc["passes"][0]["ops_before"] > doc["passes"][-1]["ops_after"] == doc["ops"]
    assert parse(doc["output"]).ops
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "opt", str(f), "--emit", "dot"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.startswith('digraph "llama_demo"') and "->" in r.stdout


def test_cli_run_writes_outputs(tmp_path):
    g = llama_shaped_graph(layers=1)
    f = tmp_path / "g.llmc"
    f.write_text(print_graph(g))
    from llmc.runtime.reference import random_inputs, random_weights

    np.savez(tmp_path / "in.npz", **random_inputs(g, DIMS, int_high={"input_ids": 256}))
    np.savez(tmp_path / "w.npz", **random_weights(g))
    out = tmp_path / "out.npz"
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "run", str(f), "--inputs",
                        str(tmp_path / "in.npz"), "--weights", str(tmp_path / "w.npz"), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with np.load(out) as z:
        assert z["logits"].shape == (2, 5, 256)
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "run", str(f), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "missing graph inputs" in r.stderr and "Traceback" not in r.stderr


def test_interpreter_error_names_the_op_line():
    from llmc.runtime.reference import ExecutionError, run

    g = parse("graph @g(%x: f32[2]) {\n  %y = sqrt(%x) : f32[2]\n  %z = cast(%y) {dtype = i64} : i64[2]\n"
              "  %w = gather(%x, %z) : f32[2]\n  return %w\n}\n")
    with pytest.raises(ExecutionError, match=r"line 4: op `%w = gather\(%x, %z\)"):
        run(g, {"x": np.array([9.0, 16.0], dtype=np.float32)})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_generic_pipeline_preserves_random_graphs(g):
    """Property: on generated graphs the whole generic pipeline keeps every output, including
    where it is inf or NaN (the generator feeds inf, NaN and exp overflow on purpose)."""
    dims = {d: 3 for v in g.inputs for d in v.type.shape if isinstance(d, str)}
    check_pass_numerics(g, "canonicalize,cse,constant_fold,dce", dims, seeds=(0,),
                        nonfinite="match")
