"""`llmc compile` / `llmc generate` end to end: pass log, artifact, manifest, instruments."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from llmc.passes.pipelines import ASCEND_VENDOR_PASSES

ROOT = Path(__file__).resolve().parents[1]
CONFIG_13B = ROOT / "benchmarks" / "configs" / "llama2-13b.json"


def llmc(*args, ok=True):
    r = subprocess.run(
        [sys.executable, "-m", "llmc.cli", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert (r.returncode == 0) == ok, r.stderr
    return r


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from llmc.frontends.fixtures import write_fixture

    return write_fixture(tmp_path_factory.mktemp("ck") / "llama_gqa", "llama_gqa", "hf-numpy")


def test_llama2_13b_config_prints_the_vendor_log(tmp_path):
    err = llmc("compile", "--config", CONFIG_13B, "--target", "ascend910b",
               "-o", tmp_path / "a").stderr
    names = [
        ln.split("[")[1].split("]")[0]
        for ln in err.splitlines()
        if ln.startswith("--- Running IR pass")
    ]
    assert names[:9] == list(ASCEND_VENDOR_PASSES)
    assert "[llama_fuse_attention_layer]  matched 38 (expected 38)" in err
    assert "[llama_fuse_attention_layer_begin]  matched 1 (expected 1)" in err
    assert "[llama_fuse_attention_layer_end]  matched 1 (expected 1)" in err
    assert "WARNING" not in err


def test_artifact_and_generation_agree_across_targets(ckpt, tmp_path):
    outs = {}
    for target in ("ascend910b", "cuda", "mlu370"):
        out = tmp_path / target
        llmc("compile", ckpt, "-t", target, "-o", out)
        assert sorted(p.name for p in out.iterdir()) == [
            "model.llmc",
            "pass_log.txt",
            "report.json",
            "weights.json",
        ]
        manifest = json.loads((out / "weights.json").read_text())
        assert manifest["backed"] and all(
            t["file"] == "model.safetensors" for t in manifest["tensors"].values()
        )
        assert "--- Running IR pass" in (out / "pass_log.txt").read_text()
        assert json.loads((out / "report.json").read_text())["target"] == target
        r = llmc("generate", out, "--ids", "1,2,3,4", "-n", "5", "--json")
        outs[target] = json.loads(r.stdout)["results"][0]["new_ids"]
    assert len({tuple(v) for v in outs.values()}) == 1 and 1 <= len(outs["cuda"]) <= 5


def test_recompiling_replaces_the_artifact_atomically(ckpt, tmp_path):
    out = tmp_path / "a"
    llmc("compile", ckpt, "-t", "cpu", "-o", out)
    llmc("compile", ckpt, "-t", "ascend910b", "-o", out)
    assert json.loads((out / "report.json").read_text())["target"] == "ascend910b"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_instruments_work_in_compile(ckpt, tmp_path):
    dump = tmp_path / "dump"
    r = llmc(
        "compile",
        ckpt,
        "-t",
        "ascend910b",
        "--dump-dir",
        dump,
        "--disable-pass",
        "llama_fuse_lm_head",
        "--print-ir-after",
        "llama_fuse_attention_layer_end",
        "--verify-each",
        "--json",
        "-o",
        tmp_path / "art",
    )
    report = json.loads(r.stdout)
    skipped = [p for p in report["passes"] if p["skipped"]]
    assert [p["name"] for p in skipped] == ["llama_fuse_lm_head"]
    assert "IR after [llama_fuse_attention_layer_end]" in r.stderr
    assert (dump / "000_input.llmc").exists() and (
        dump / "004_llama_fuse_attention_layer_begin.llmc"
    ).exists()


def test_user_errors_are_one_line(ckpt, tmp_path):
    r = llmc("compile", ckpt, "-t", "tpu", "-o", tmp_path / "t", ok=False)
    _no_traceback(r, "'tpu' is not one of 'ascend910b', 'mlu370', 'bi150', 'cuda', 'cpu'")
    r = llmc("compile", "--config", CONFIG_13B, "-t", "cpu", "-o", tmp_path / "c")
    r = llmc("generate", tmp_path / "c", "--ids", "1,2", ok=False)
    assert "compiled from a config alone" in r.stderr
    r = llmc("generate", tmp_path / "missing", "--ids", "1", ok=False)
    assert "not a readable llmc artifact" in r.stderr


@pytest.mark.parametrize("config", ["llama2-13b.json", "baichuan2-13b.json"])
def test_config_only_13b_compile_stays_small(config, tmp_path):
    """A 13B pipeline from config.json alone: no weight file, peak memory under 300 MB."""
    # VmHWM is this process's own peak (ru_maxrss would include pytest's RSS at fork time)
    code = ("import sys\n"
            "from llmc.cli import main\n"
            "sys.argv = ['llmc', 'compile', '--config', sys.argv[1], '--target', 'ascend910b',"
            " '-o', sys.argv[2]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
            "print([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])\n")
    out = tmp_path / "art"
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks" / "configs" / config),
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stdout.strip().splitlines()[-1])
    assert peak_kib < 300 * 1024, peak_kib
    manifest = json.loads((out / "weights.json").read_text())
    assert manifest["backed"] is False and len(manifest["tensors"]) > 300


def test_fixture_command_writes_a_loadable_checkpoint(tmp_path):
    llmc("fixture", tmp_path / "m", "--arch", "baichuan2_13b", "--format", "paddle")
    r = llmc("inspect", tmp_path / "m", "--json")
    doc = json.loads(r.stdout)
    assert doc["weights"] == "checked" and doc["model"] == "baichuan2-13b" and doc["position"] == "alibi"
    bad = llmc("fixture", tmp_path / "x", "--arch", "gpt2", ok=False)
    _no_traceback(bad, "'--arch': 'gpt2' is not one of 'llama', 'llama_gqa'")
    assert not (tmp_path / "x").exists()


def test_compile_checks_weights_before_writing(tmp_path):
    from llmc.frontends.fixtures import read_safetensors_dir, write_fixture, write_safetensors

    model = write_fixture(tmp_path / "m", "llama", "hf-numpy")
    tensors = read_safetensors_dir(model)
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    for f in model.glob("model*.safetensors*"):
        f.unlink()
    write_safetensors(model, tensors)
    r = llmc("compile", model, "--target", "cuda", "-o", tmp_path / "out", ok=False)
    assert r.returncode == 2 and "model.layers.1.mlp.up_proj.weight" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


# ---- review fixes: output path, atomic swap, id / length validation, eos -------------


def _no_traceback(r, *needles):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_compile_onto_an_existing_file_is_a_user_error(ckpt, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    r = llmc("compile", ckpt, "-t", "cpu", "-o", afile, ok=False)
    _no_traceback(r, f"{afile}: exists and is not an llmc artifact directory")
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_write_artifact_refuses_a_file_from_the_library(ckpt, tmp_path):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model
    from llmc.compiler.errors import LlmcError

    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmcError, match="exists and is not an llmc artifact directory"):
        write_artifact(compile_model(ckpt, "cpu"), tmp_path / "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_failed_swap_restores_the_old_artifact(ckpt, tmp_path, monkeypatch):
    import os

    from llmc import artifact as comp
    from llmc.compile import compile_model
    from llmc.compiler import atomic
    from llmc.compiler.errors import LlmcError

    out = tmp_path / "out"
    comp.write_artifact(compile_model(ckpt, "cpu"), out)
    new = compile_model(ckpt, "ascend910b")
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # the two-rename fallback
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # OUT already moved aside; putting the new one in fails
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(LlmcError, match="cannot write the artifact"):
        comp.write_artifact(new, out)
    assert len(calls) == 3  # out -> old, tmp -> out (fails), old -> out
    assert json.loads((out / "report.json").read_text())["target"] == "cpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .old / .tmp left
    monkeypatch.setattr(os, "replace", real)
    comp.write_artifact(new, out)  # the fallback's success path
    assert json.loads((out / "report.json").read_text())["target"] == "ascend910b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_exchange_swaps_two_directories(tmp_path):
    from llmc.compiler.atomic import exchange as _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no RENAME_EXCHANGE here")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


@pytest.fixture(scope="module")
def artifacts(ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("arts")
    for target in ("ascend910b", "cpu"):
        llmc("compile", ckpt, "-t", target, "-o", base / target)
    return base


@pytest.mark.parametrize("target", ["ascend910b", "cpu"])
@pytest.mark.parametrize(
    "ids,needle",
    [
        ("-1", "token id -1 is out of range; the vocabulary has 256 ids (0..255)"),
        ("99999", "token id 99999 is out of range"),
        ("1,256", "token id 256 is out of range"),
        ("1,,2", "--ids has an empty item: '1,,2'"),
        ("1,2,", "--ids has an empty item"),
        ("1,x", "--ids must be comma-separated integers"),
    ],
)
def test_generate_validates_ids_up_front(artifacts, target, ids, needle):
    r = llmc("generate", artifacts / target, f"--ids={ids}", "-n", "2", ok=False)
    _no_traceback(r, needle)
    assert "%" not in r.stderr  # no IR dump


def test_prompt_length_is_checked_alike_on_every_target(artifacts):
    too_long = ",".join(["5"] * 509)  # 509 + 4 > 512 positions
    fits = ",".join(["5"] * 508)
    outs = {}
    for target in ("ascend910b", "cpu"):
        r = llmc("generate", artifacts / target, "--ids", too_long, "-n", "4", ok=False)
        _no_traceback(r, "a 509-token prompt plus 4 new tokens needs 513 positions; "
                         "the model holds 512 (max_position_embeddings)")
        r = llmc("generate", artifacts / target, "--ids", fits, "-n", "4", "--json")
        outs[target] = json.loads(r.stdout)["results"][0]["new_ids"]
    assert outs["ascend910b"] == outs["cpu"]


def test_generator_prefill_checks_max_seq_len_first(ckpt):
    from llmc.compile import build_graph, compile_model
    from llmc.compiler.errors import LlmcError
    from llmc.frontends.loader import open_checkpoint
    from llmc.runtime.generate import Generator

    ck = open_checkpoint(ckpt)
    for g in (build_graph(ck.config, ck.naming, "inference"),
              compile_model(ckpt, "ascend910b").graph):
        gen = Generator(g, ck.weights)
        assert gen.max_positions == 512
        with pytest.raises(LlmcError, match=r"520-token prompt plus 1 new tokens needs 521 "
                                            r"positions; the model holds 512 \(max_seq_len\)"):
            gen.prefill([[5] * 520], 1)


def test_eos_stops_alike_on_compiled_and_uncompiled_graphs(ckpt):
    from llmc.compile import Artifact, build_graph, compile_model, generate
    from llmc.frontends.loader import open_checkpoint
    from llmc.runtime.generate import Generator

    ck = open_checkpoint(ckpt)
    report = {"config": ck.config.to_dict()}
    graphs = {
        "inference": build_graph(ck.config, ck.naming, "inference"),
        "full": build_graph(ck.config, ck.naming, "full"),
        "ascend910b": compile_model(ckpt, "ascend910b").graph,
        "cpu": compile_model(ckpt, "cpu").graph,
        "cuda": compile_model(ckpt, "cuda").graph,
    }
    forms = {"inference": "inference", "ascend910b": "inference", "cpu": "cache",
             "cuda": "cache"}

    def gen(name, eos, prompt=(1, 17, 42, 9)):
        art = Artifact(None, graphs[name], dict(report, form=forms.get(name, "full")), {})
        return generate(art, list(prompt), 8, eos, weights=ck.weights)

    free = {name: gen(name, None) for name in graphs}
    assert len({tuple(v) for v in free.values()}) == 1
    run = free["full"]
    assert len(run) == 8
    eos = run[2]
    want = run[: run.index(eos) + 1]
    assert len(want) < 8
    for name in graphs:
        assert gen(name, eos) == want, name
    # a batch where one sequence stops and the other runs on: block attention graphs agree
    prompts = [[1, 17, 42, 9], [3, 4]]
    before = Generator(graphs["inference"], ck.weights)
    after = Generator(graphs["ascend910b"], ck.weights)
    both = before.generate(prompts, 8, eos)
    assert both == after.generate(prompts, 8, eos)
    assert both[0] == want
    other = before.generate([prompts[1]], 8)[0]
    assert both[1] == (other[: other.index(eos) + 1] if eos in other else other)
