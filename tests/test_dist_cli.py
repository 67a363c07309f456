"""`llmc train --tp 2 / --dp 2` and `llmc generate --tp 2` end to end (the command launches
its 2 ranks through paddle.distributed.launch): --dp 2 trains as one process with the batch
doubled, --tp 2 as one process, each writing one unsharded checkpoint that transformers
loads and that resumes at another tp; generation's greedy tokens are one process's; killing
a rank of a --tp 2 run mid-run ends the command within 60 s naming the rank, and every
checkpoint left is whole and resumes on one process; a user error in the ranks is one line,
exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from clitools import run_cli

pytest.importorskip("paddle")
pytestmark = pytest.mark.dist

import torch  # noqa: E402
import transformers  # noqa: E402

from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_sft  # noqa: E402
from llmc.train_checkpoint import checkpoints, load_checkpoint  # noqa: E402

LR = 3e-3
SFT = ("--mode", "sft", "--lr", str(LR), "--seq-len", "64")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist_cli")
    return {"model": fixtures.write_fixture(d / "model", "llama_gqa"),
            "sft": write_tiny_sft(d / "sft.jsonl")}


def train(monkeypatch, capsys, files, out, *args):
    """`llmc train ... --json` in this process."""
    code, stdout, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                                files["sft"], "-o", out, *SFT, *args, "--json")
    assert code == 0, err
    return json.loads(stdout)


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one(files, tmp_path_factory):
    """The run directory of two steps of --batch-size 4 on one process."""
    from llmc.cli import main

    out = tmp_path_factory.mktemp("one") / "run"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as e:
        mp.setattr(sys, "argv", ["llmc", "train", str(files["model"]), "--data",
                                 str(files["sft"]), "-o", str(out), *SFT, "--steps", "2",
                                 "--batch-size", "4"])
        main()
    assert e.value.code == 0
    return out


def same_checkpoints(a: Path, b: Path) -> None:
    """The same tensors, equal to a tenth of the learning rate: AdamW's first steps move a
    weight by ~lr * sign(g), so where a gradient cancels to ~1e-8 the last bits of its sum
    can flip a step (tests/test_dist_runtime.py compares the step itself to 1e-5); a wrong
    shard would be off by the weights' size (~0.1)."""
    atol = 0.1 * LR
    fingerprint = json.loads((b / "trainer_state.json").read_text())["fingerprint"]
    _, wa, opt_a = load_checkpoint(a, fingerprint)
    _, wb, opt_b = load_checkpoint(b, fingerprint)
    assert set(wa) == set(wb) and set(opt_a) == set(opt_b)
    for name, w in wb.items():
        np.testing.assert_allclose(wa[name], w, atol=atol, err_msg=name)


def test_dp2_trains_as_one_process_with_the_batch_doubled(monkeypatch, capsys, files, one,
                                                          tmp_path):
    out = tmp_path / "dp2"
    two = train(monkeypatch, capsys, files, out, "--steps", "2", "--batch-size", "2",
                "--dp", "2")
    assert two["checkpoints"] == [str(out / "checkpoint-2")]
    for a, b in zip(metrics(out), metrics(one), strict=True):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
        assert a["collectives"] == {"all_reduce (dp scalars)": {"calls": 2, "bytes": 24}}
    same_checkpoints(out / "checkpoint-2", one / "checkpoint-2")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.iterdir())


def test_tp2_trains_as_one_process_and_resumes_at_tp1(monkeypatch, capsys, files, one,
                                                      tmp_path):
    out = tmp_path / "tp2"
    train(monkeypatch, capsys, files, out, "--steps", "2", "--batch-size", "4", "--tp", "2")
    for a, b in zip(metrics(out), metrics(one), strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * b["grad_norm"]
        # the vocabulary-parallel cross-entropy: no logits gathered, one max all-reduced
        assert "all_gather" not in a["collectives"]
        assert a["collectives"]["all_reduce (loss max)"]["calls"] == 1
    same_checkpoints(out / "checkpoint-2", one / "checkpoint-2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    want = transformers.AutoModelForCausalLM.from_pretrained(one / "checkpoint-2")
    np.testing.assert_allclose(hf(ids).logits.detach(), want(ids).logits.detach(), atol=1e-4)
    # the tp=2 run goes on at tp=1, and a copy of the one-process run at tp=2: the same step 3
    shutil.copytree(one, tmp_path / "one_tp2")
    at_tp1 = train(monkeypatch, capsys, files, out, "--steps", "3", "--batch-size", "4",
                   "--resume")
    at_tp2 = train(monkeypatch, capsys, files, tmp_path / "one_tp2", "--steps", "3",
                   "--batch-size", "4", "--resume", "--tp", "2")
    assert at_tp1["first_step"] == at_tp2["first_step"] == 2
    assert at_tp1["final_loss"] == pytest.approx(at_tp2["final_loss"], rel=1e-5)


def test_tp2_with_sequence_parallel_trains_as_one_process(monkeypatch, capsys, files, one,
                                                         tmp_path):
    out = tmp_path / "sp"
    train(monkeypatch, capsys, files, out, "--steps", "2", "--batch-size", "4", "--tp", "2",
          "--sequence-parallel")
    for a, b in zip(metrics(out), metrics(one), strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * b["grad_norm"]
        # sequence parallel gathers the sequence before each column-parallel block; without
        # it the only all_gather is the logits' (test above)
        assert a["collectives"]["all_gather"]["calls"] > 1
    same_checkpoints(out / "checkpoint-2", one / "checkpoint-2")


def test_sequence_parallel_without_tp_is_one_line(monkeypatch, capsys, files, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data", files["sft"],
                           "-o", tmp_path / "x", *SFT, "--steps", "1", "--sequence-parallel")
    assert code == 2 and err.strip().count("\n") == 0 and "--sequence-parallel" in err


def test_tp2_dp2_on_four_ranks_trains_as_one_process(monkeypatch, capsys, files, one,
                                                     tmp_path):
    out = tmp_path / "tp2dp2"
    train(monkeypatch, capsys, files, out, "--steps", "2", "--batch-size", "2", "--tp", "2",
          "--dp", "2")
    for a, b in zip(metrics(out), metrics(one), strict=True):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * b["grad_norm"]
        assert a["collectives"]["all_reduce (dp scalars)"]["calls"] == 2
    same_checkpoints(out / "checkpoint-2", one / "checkpoint-2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_rendezvous_through_the_launchers_master(files, one, tmp_path):
    """--nnodes 2 --master: two "nodes" (here both on this machine), one rank each."""
    out, master = tmp_path / "nodes", f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "llmc", "train", str(files["model"]), "--data",
           str(files["sft"]), "-o", str(out), *SFT, "--steps", "2", "--batch-size", "4",
           "--tp", "2", "--nnodes", "2", "--master", master]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs
    assert sorted(bool(o) for o, _ in outs) == [False, True]  # only rank 0's node prints
    for a, b in zip(metrics(out), metrics(one), strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]


def compile_artifact(monkeypatch, capsys, files, out, *args) -> Path:
    code, _, err = run_cli(monkeypatch, capsys, "compile", files["model"], "-o", out, *args)
    assert code == 0, err
    return out


def generate(monkeypatch, capsys, art, *args) -> dict:
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, "--ids", "1,5,9,14", "-n",
                             "10", "--runtime", "paddle", "--json", *args)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("target,form", [("cpu", "cache"), ("ascend910b", "inference")])
def test_generate_tp2_gives_one_process_greedy_tokens(monkeypatch, capsys, files, tmp_path,
                                                      target, form):
    art = compile_artifact(monkeypatch, capsys, files, tmp_path / "art", "--target", target,
                           "--form", form)
    want = generate(monkeypatch, capsys, art)
    if target == "ascend910b":  # compiled sharded, with the MC2 fusions
        art = compile_artifact(monkeypatch, capsys, files, tmp_path / "tp2", "--target",
                               target, "--form", form, "--tp", "2")
    # else the unsharded artifact is compiled again in memory with --tp 2
    got = generate(monkeypatch, capsys, art, "--tp", "2")
    assert got["results"] == want["results"]
    assert got["kernels"]["all_reduce"] == "paddle.distributed.all_reduce"
    if target == "ascend910b":
        assert got["kernels"]["matmul_all_reduce"].startswith("matmul + paddle.distributed")


def rank_pid(mark: str, rank: int) -> int | None:
    """The pid of the process of `rank` whose environment carries `mark`."""
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"LLMC_TEST_MARK={mark}".encode() in env and \
                f"PADDLE_TRAINER_ID={rank}".encode() in env:
            return int(proc.name)
    return None


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_rank_ends_the_run_naming_it_and_leaves_whole_checkpoints(
        monkeypatch, capsys, files, tmp_path):
    out, mark = tmp_path / "run", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "llmc", "train", str(files["model"]), "--data",
           str(files["sft"]), "-o", str(out), *SFT, "--batch-size", "4", "--tp", "2",
           "--steps", "1000", "--save-every", "1", "--save-total-limit", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LLMC_TEST_MARK": mark})
    try:
        wait_for(lambda: checkpoints(out), 120, "a checkpoint")
        os.kill(wait_for(lambda: rank_pid(mark, 1), 10, "rank 1"), signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed < 60
    assert proc.returncode == 2 and err.count("\n") == 1, err
    # the launcher notices rank 1's death, or rank 0's abort on the broken connection first
    assert re.search(r"^error: rank 1 (failed \(killed by SIGKILL\)|died without a message "
                     r"\(killed: SIGKILL, out of memory\?\); rank 0 lost its connection to it)",
                     err, re.M), err
    assert rank_pid(mark, 0) is None  # no rank left behind
    shutil.rmtree(re.search(r"logs: (\S+)$", err.strip()).group(1))  # kept for a person
    found = checkpoints(out)
    assert found and all(not p.name.startswith(".") for p in out.iterdir()
                         if p.name.startswith("checkpoint"))
    fingerprint = json.loads((found[-1][1] / "trainer_state.json").read_text())["fingerprint"]
    for step, path in found:
        state, weights, _ = load_checkpoint(path, fingerprint)  # every one reads whole
        assert state["step"] == step and weights
    last = found[-1][0]
    resumed = train(monkeypatch, capsys, files, out, "--batch-size", "4", "--resume",
                    "--steps", str(last + 1))
    assert resumed["first_step"] == last and len(resumed["metrics"]) == 1


def test_a_user_error_in_the_ranks_is_one_line(monkeypatch, capsys, files, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                             tmp_path / "missing.jsonl", "-o", tmp_path / "run", "--steps", "1",
                             "--tp", "2")
    assert code == 2 and out == "" and err == f"error: {tmp_path / 'missing.jsonl'}: no such " \
        "data file\n", err
