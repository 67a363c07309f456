"""`llmc train --dp 2` end to end (the command launches its 2 ranks through
paddle.distributed.launch): it trains as one process with the batch doubled and writes one
unsharded checkpoint; killing a rank mid-run ends the command within 60 s naming the
rank, and every checkpoint left is whole and resumes on one process."""

from __future__ import annotations

import json
import os
import re
import signal
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

from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_sft  # noqa: E402
from llmc.train_checkpoint import checkpoints, load_checkpoint  # noqa: E402

SFT = ("--mode", "sft", "--lr", "3e-3", "--seq-len", "64")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist_cli")
    return {"model": fixtures.write_fixture(d / "model", "llama_gqa"),
            "sft": write_tiny_sft(d / "sft.jsonl")}


def train(monkeypatch, capsys, files, out, *args):
    code, stdout, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                                files["sft"], "-o", out, *SFT, *args, "--json")
    assert code == 0, err
    return json.loads(stdout)


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_dp2_trains_as_one_process_with_the_batch_doubled(monkeypatch, capsys, files,
                                                          tmp_path):
    two = train(monkeypatch, capsys, files, tmp_path / "dp2", "--steps", "2", "--batch-size",
                "2", "--dp", "2")
    one = train(monkeypatch, capsys, files, tmp_path / "one", "--steps", "2", "--batch-size",
                "4")
    assert two["checkpoints"] == [str(tmp_path / "dp2" / "checkpoint-2")]
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    for a, b in zip(metrics(tmp_path / "dp2"), metrics(tmp_path / "one"), strict=True):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
        assert a["collectives"] == {"all_reduce (dp scalars)": {"calls": 2, "bytes": 24}}
    fp = json.loads((tmp_path / "one" / "checkpoint-2" / "trainer_state.json").read_text())
    _, w2, opt2 = load_checkpoint(tmp_path / "dp2" / "checkpoint-2", fp["fingerprint"])
    _, w1, opt1 = load_checkpoint(tmp_path / "one" / "checkpoint-2", fp["fingerprint"])
    assert set(w2) == set(w1) and set(opt2) == set(opt1)
    for name, w in w1.items():  # AdamW's first steps are sign-like: allow an lr-sized flip
        np.testing.assert_allclose(w2[name], w, atol=3e-3 * 1e-2, err_msg=name)
    assert sorted(p.name for p in (tmp_path / "dp2").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


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
           str(files["sft"]), "-o", str(out), *SFT, "--batch-size", "2", "--dp", "2",
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
    assert proc.returncode == 2
    # the launcher notices rank 1's death, or rank 0's abort on the broken connection first
    assert re.search(r"^error: rank 1 (failed \(killed by SIGKILL\)|died without a message "
                     r"\(killed: SIGKILL, out of memory\?\); rank 0 lost its connection to it)",
                     err, re.M), err
    assert rank_pid(mark, 0) is None  # no rank left behind
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
