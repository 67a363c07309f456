"""The reference interpreter as a class: the per-op hook, values kept by name, and
`llmc run --dump-values` (how a user compares llmc with a vendor kernel op by op)."""

import json

import numpy as np
import pytest
from clitools import run_cli

from llmc.compiler.text import parse, print_graph
from llmc.demo import llama_shaped_graph
from llmc.runtime.reference import (
    ExecutionError,
    Interpreter,
    random_inputs,
    random_weights,
    run,
    run_values,
)

DIMS = {"batch": 2, "seq": 5}


@pytest.fixture(scope="module")
def model():
    g = llama_shaped_graph(layers=1)
    return g, random_inputs(g, DIMS, int_high={"input_ids": 256}), random_weights(g)


def eps_after_sqrt_rms_norm(x, w, epsilon):
    """A plausible vendor bug: eps added after the square root."""
    xf = x.astype(np.float32)
    return [(xf / (np.sqrt(np.mean(xf * xf, -1, keepdims=True)) + epsilon) * w).astype(x.dtype)]


class VendorNorm(Interpreter):
    """rms_norm through another kernel, every other op through the reference."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.replaced = []

    def run_op(self, op, args):
        if op.kind == "rms_norm":
            self.replaced.append(op.outputs[0].name)
            return eps_after_sqrt_rms_norm(*args, op.attrs["epsilon"])
        return super().run_op(op, args)


def test_default_interpreter_is_run(model):
    g, ins, w = model
    (want,) = run(g, ins, w)
    (got,) = Interpreter(g, w).run(ins)
    np.testing.assert_array_equal(got, want)


def test_overriding_run_op_replaces_one_kernel(model):
    g, ins, w = model
    # small hidden states, where eps placement matters (the embedding scale sets them)
    w = dict(w, **{"model.embed_tokens.weight": w["model.embed_tokens.weight"] * 1e-2})
    (ref,) = run(g, ins, w)
    vendor = VendorNorm(g, w)
    (got,) = vendor.run(ins)
    norms = [op.outputs[0].name for op in g.ops if op.kind == "rms_norm"]
    assert vendor.replaced == norms and len(norms) == 3
    assert np.abs(got - ref).max() > 1e-3 * np.abs(ref).max()


def test_values_are_kept_by_ssa_name_in_execution_order(model):
    g, ins, w = model
    values = run_values(g, ins, w)
    assert list(values) == [v.name for v in g.inputs] + [v.name for op in g.ops for v in op.outputs]
    np.testing.assert_array_equal(values["logits"], run(g, ins, w)[0])
    np.testing.assert_array_equal(values["input_ids"], ins["input_ids"])
    emb = w["model.embed_tokens.weight"][ins["input_ids"]]
    np.testing.assert_array_equal(values["h"], emb)  # a value checked from the formula


def test_op_by_op_comparison_finds_the_first_divergent_op(model):
    """The workflow the hook exists for: keep both runs' values, find where they part."""
    g, ins, w = model
    w = dict(w, **{"model.embed_tokens.weight": w["model.embed_tokens.weight"] * 1e-2})
    ref = run_values(g, ins, w)
    vendor = VendorNorm(g, w, keep_values=True)
    vendor.run(ins)
    assert list(vendor.values) == list(ref)
    differs = [n for n in ref if not np.allclose(vendor.values[n], ref[n], rtol=1e-5, atol=1e-7)]
    first_norm = next(op for op in g.ops if op.kind == "rms_norm").outputs[0].name
    assert differs[0] == first_norm


def test_values_are_freed_without_keep_values(model):
    g, ins, w = model
    interp = Interpreter(g, w)
    interp.run(ins)
    assert interp.values == {}


GATHER = ("graph @g(%x: f32[2]) {\n  %y = sqrt(%x) : f32[2]\n  %z = neg(%y) : f32[2]\n"
          "  return %z\n}\n")


def test_hook_failures_name_the_op_line():
    g = parse(GATHER)
    x = {"x": np.array([4.0, 9.0], np.float32)}

    class Raises(Interpreter):
        def run_op(self, op, args):
            if op.kind == "neg":
                raise ValueError("vendor kernel crashed")
            return super().run_op(op, args)

    with pytest.raises(ExecutionError, match=r"line 3: op `%z = neg\(%y\).*vendor kernel crashed"):
        Raises(g).run(x)

    class TooMany(Interpreter):
        def run_op(self, op, args):
            return [args[0], args[0]]

    with pytest.raises(ExecutionError, match="returned 2 results, the op has 1"):
        TooMany(g).run(x)

    class WrongDtype(Interpreter):
        def run_op(self, op, args):
            return [args[0].astype(np.float64)]

    with pytest.raises(ExecutionError, match="line 2: .*expected dtype f32, got float64"):
        WrongDtype(g).run(x)
    (out,) = WrongDtype(g, check_types=False).run(x)
    assert out.dtype == np.float64


# ---- llmc run --dump-values ----------------------------------------------------------------
@pytest.fixture()
def files(tmp_path, model):
    g, ins, w = model
    (tmp_path / "g.llmc").write_text(print_graph(g))
    np.savez(tmp_path / "in.npz", **ins)
    np.savez(tmp_path / "w.npz", **w)
    return tmp_path


def dump_cli(monkeypatch, capsys, d, dump, *extra):
    return run_cli(monkeypatch, capsys, "run", d / "g.llmc", "-i", d / "in.npz", "-w",
                   d / "w.npz", "-o", d / "out.npz", "--dump-values", dump, *extra)


def test_dump_values_writes_every_value(monkeypatch, capsys, files, model):
    g, ins, w = model
    dump = files / "values"
    code, out, err = dump_cli(monkeypatch, capsys, files, dump)
    assert code == 0, err
    index = json.loads((dump / "index.json").read_text())
    want = run_values(g, ins, w)
    assert [r["name"] for r in index["values"]] == list(want)
    assert sorted(p.name for p in dump.iterdir()) == sorted(
        [r["file"] for r in index["values"]] + ["index.json"])
    for r in index["values"]:
        arr = np.load(dump / r["file"], allow_pickle=False)
        np.testing.assert_array_equal(arr, want[r["name"]], err_msg=r["name"])
        assert r["shape"] == list(arr.shape)
    rows = {r["name"]: r for r in index["values"]}
    norm = next(op for op in g.ops if op.kind == "rms_norm")
    assert rows[norm.outputs[0].name]["op"] == "rms_norm"
    assert rows["input_ids"]["op"] == "input" and rows["logits"]["dtype"] == "f32"
    assert index["outputs"] == ["logits"]
    with np.load(files / "out.npz") as z:
        np.testing.assert_array_equal(z["logits"], np.load(dump / rows["logits"]["file"]))
    assert f"wrote {len(want)} values to {dump}" in out
    assert not [p.name for p in files.iterdir() if p.name.startswith(".")]  # no temp left


def test_dump_values_line_numbers_point_into_the_file(monkeypatch, capsys, files):
    dump = files / "values"
    assert dump_cli(monkeypatch, capsys, files, dump)[0] == 0
    lines = (files / "g.llmc").read_text().splitlines()
    for r in json.loads((dump / "index.json").read_text())["values"]:
        if r["op"] != "input":
            assert lines[r["line"] - 1].lstrip().startswith(f"%{r['name']} = {r['op']}(")


def test_dump_values_replaces_an_earlier_dump_but_nothing_else(monkeypatch, capsys, files):
    dump = files / "values"
    assert dump_cli(monkeypatch, capsys, files, dump)[0] == 0
    (dump / "stale.npy").write_bytes(b"old")
    code, out, _ = dump_cli(monkeypatch, capsys, files, dump, "--json")
    assert code == 0 and json.loads(out)["values"]["dir"] == str(dump)
    assert not (dump / "stale.npy").exists()  # the earlier dump was replaced whole
    mine = files / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = dump_cli(monkeypatch, capsys, files, mine)
    assert code == 2 and "is not empty and holds no earlier value dump" in err
    assert "Traceback" not in err and [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_dump_values_refuses_a_dir_holding_its_own_files(monkeypatch, capsys, files):
    code, _, err = dump_cli(monkeypatch, capsys, files, files)
    assert code == 2 and "is inside it" in err and err.count("\n") == 1
    assert (files / "g.llmc").exists() and (files / "in.npz").exists()
    (files / "file").write_text("x")
    code, _, err = dump_cli(monkeypatch, capsys, files, files / "file")
    assert code == 2 and "not a directory" in err


def test_dump_values_stores_bf16_as_exact_f32(monkeypatch, capsys, tmp_path):
    g = parse("graph @g(%x: f32[3]) {\n  %b = cast(%x) {dtype = bf16} : bf16[3]\n"
              "  %y = cast(%b) {dtype = f32} : f32[3]\n  return %y\n}\n")
    (tmp_path / "g.llmc").write_text(print_graph(g))
    np.savez(tmp_path / "in.npz", x=np.array([1.0, 1.00390625, -3.1], np.float32))
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "g.llmc", "-i",
                           tmp_path / "in.npz", "-o", tmp_path / "o.npz", "--dump-values",
                           tmp_path / "v")
    assert code == 0, err
    row = json.loads((tmp_path / "v" / "index.json").read_text())["values"][1]
    assert (row["name"], row["dtype"], row["stored_dtype"]) == ("b", "bf16", "f32")
    b = np.load(tmp_path / "v" / row["file"])
    # bf16 keeps 8 mantissa bits: 1 + 2^-8 rounds to 1 (ties to even), -3.1 to -3.09375
    np.testing.assert_array_equal(b, np.array([1.0, 1.0, -3.09375], np.float32))
