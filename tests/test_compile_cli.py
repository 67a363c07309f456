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


def test_llama2_13b_config_prints_the_vendor_log():
    err = llmc("compile", "--config", CONFIG_13B, "--target", "ascend910b").stderr
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
        outs[target] = json.loads(r.stdout)["new_ids"]
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
    )
    report = json.loads(r.stdout)
    skipped = [p for p in report["passes"] if p["skipped"]]
    assert [p["name"] for p in skipped] == ["llama_fuse_lm_head"]
    assert "IR after [llama_fuse_attention_layer_end]" in r.stderr
    assert (dump / "000_input.llmc").exists() and (
        dump / "004_llama_fuse_attention_layer_begin.llmc"
    ).exists()


def test_user_errors_are_one_line(ckpt, tmp_path):
    r = llmc("compile", ckpt, "-t", "tpu", ok=False)
    assert "unknown target 'tpu'; known targets: ascend910b, mlu370, bi150, cuda, cpu" in r.stderr
    assert "Traceback" not in r.stderr
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
    assert bad.returncode == 2 and "unknown architecture 'gpt2'" in bad.stderr


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
