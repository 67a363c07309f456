"""Artifact writes killed mid-way, artifact modes, KV caches too big for memory, eos lists."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clitools import run_cli

KILLED_WRITER = """
import os, signal, sys
import llmc.compiler.atomic as atomic
def killed(tmp, out):  # SIGKILL while the artifact is being put in place
    os.kill(os.getpid(), signal.SIGKILL)
atomic._swap = killed
from llmc.cli import main
sys.argv = ["llmc", "compile", sys.argv[1], "-t", "cpu", "-o", sys.argv[2]]
main()
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from llmc.frontends.fixtures import write_fixture

    return write_fixture(tmp_path_factory.mktemp("ck") / "m", "llama_gqa", "hf-numpy")


def test_the_next_compile_removes_what_a_killed_one_left(monkeypatch, capsys, ckpt, tmp_path):
    out = tmp_path / "art"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ckpt), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = writer.communicate()
    assert writer.returncode == -signal.SIGKILL, stderr
    (left,) = [p for p in tmp_path.iterdir()]
    assert left.name.startswith(f".art.tmp-{writer.pid}-") and (left / "model.llmc").exists()
    live = tmp_path / f".art.tmp-{os.getpid()}-0a1b2c3d"  # a writer still running: kept
    other = tmp_path / ".other.tmp-1-0a1b2c3d"  # another artifact's: not ours to judge
    live.mkdir()
    other.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "compile", ckpt, "-t", "cpu", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "art"])
    assert json.loads((out / "report.json").read_text())["target"] == "cpu"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_the_artifact_directory_follows_the_umask(ckpt, tmp_path, umask):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model

    c = compile_model(ckpt, "cpu")
    old = os.umask(umask)
    try:
        out = write_artifact(c, tmp_path / "art")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "model.llmc").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture(scope="module")
def artifacts(ckpt, tmp_path_factory):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model

    base = tmp_path_factory.mktemp("arts")
    return {t: write_artifact(compile_model(ckpt, t), base / t) for t in ("ascend910b", "cpu")}


def test_a_kv_cache_that_cannot_fit_is_refused(monkeypatch, capsys, ckpt, artifacts):
    import llmc.runtime.generate as G

    cfg = json.loads((ckpt / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    prompt, new, block = 3, 30, 16  # 33 tokens: 3 blocks of 16 per sequence
    need = (2 * cfg["num_hidden_layers"] * 3 * cfg["num_key_value_heads"] * block * head_dim * 4)
    monkeypatch.setattr(G, "available_memory", lambda: need - 1)
    code, out, err = run_cli(monkeypatch, capsys, "generate", artifacts["ascend910b"],
                             "--ids", ",".join(["1"] * prompt), "-n", new)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"needs {need:,} bytes" in err and f"only {need - 1:,} bytes of memory" in err
    monkeypatch.setattr(G, "available_memory", lambda: need)
    code, out, err = run_cli(monkeypatch, capsys, "generate", artifacts["ascend910b"],
                             "--ids", ",".join(["1"] * prompt), "-n", new)
    assert code == 0, err


def _with_eos(art: Path, eos, tmp_path: Path) -> Path:
    copy = shutil.copytree(art, tmp_path / f"{art.name}-eos")
    report = json.loads((copy / "report.json").read_text())
    report["config"]["eos_token_id"] = eos
    (copy / "report.json").write_text(json.dumps(report))
    return copy


@pytest.mark.parametrize("target", ["ascend910b", "cpu"])
def test_eos_may_be_a_list(monkeypatch, capsys, artifacts, tmp_path, target):
    def gen(art):
        code, out, err = run_cli(monkeypatch, capsys, "generate", art, "--ids", "1,17,42,9",
                                 "-n", "8", "--json")
        assert code == 0, err
        return json.loads(out)["results"][0]["new_ids"]

    free = gen(_with_eos(artifacts[target], None, tmp_path))
    assert len(free) == 8
    stops = [free[5], free[2]]  # either id ends the sequence
    first = min(i for i, t in enumerate(free) if t in stops)
    assert first <= 2
    got = gen(_with_eos(artifacts[target], stops, tmp_path / "l"))
    assert got == free[: first + 1]
    assert gen(_with_eos(artifacts[target], free[first], tmp_path / "i")) == got


def test_generator_takes_an_eos_list_and_refuses_other_types(ckpt):
    from llmc.compile import build_graph
    from llmc.frontends.loader import open_checkpoint
    from llmc.runtime.generate import GenerationError, Generator, eos_ids

    ck = open_checkpoint(ckpt)
    gen = Generator(build_graph(ck.config, ck.naming, "inference"), ck.weights)
    prompts = [[1, 17, 42, 9], [3, 4]]
    free = gen.generate(prompts, 6)
    stops = (free[0][3], free[1][1])
    got = gen.generate(prompts, 6, stops)
    for seq, want in zip(got, free):
        cut = min((i for i, t in enumerate(want) if t in stops), default=len(want) - 1)
        assert seq == want[: cut + 1]
    assert eos_ids(None) == frozenset() and eos_ids(2) == {2} and eos_ids((2, 7)) == {2, 7}
    for bad in ("</s>", 2.0, True, [2, None]):
        with pytest.raises(GenerationError, match="eos_token_id must be an integer or a list"):
            eos_ids(bad)
