"""The distributed Paddle runtime on 2 CPU processes (gloo), launched once by
paddle.distributed.launch (tests/dist_worker.py), against one process running the
unsharded toy model: TP=2 logits within 1e-5 relative, identical greedy tokens, a training
step's loss, global gradient norm, updated weights and AdamW moments within 1e-5 (with
clipping active), resume from the gathered state; the same with sequence parallel, with
the MC2 fused ops, and with the fused-kernel path on a stand-in NPU kernel; DP=2 on half
the rows each equals one process on all of them. Each step's collectives are counted."""

import json
from pathlib import Path

import numpy as np
import pytest

import dist_toy as toy
import dist_worker as worker
from dist_tools import launch, rel

pytest.importorskip("paddle")
pytestmark = pytest.mark.dist

from llmc.runtime.paddle import TrainConfig, Trainer  # noqa: E402

TOL = 1e-5
TP_RUNS = ["tp", "sp", "tp_mc2", "sp_mc2", "npu_mc2"]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    launch(Path(worker.__file__), out)
    return ([dict(np.load(out / f"rank{r}.npz")) for r in range(2)],
            [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)])


@pytest.fixture(scope="module")
def one():
    """The unsharded toy on one process: logits, greedy tokens, a step, a second step."""
    b = toy.batch(0)
    t = Trainer(toy.graphs()["full"], toy.weights(), TrainConfig(**worker.CONFIG))
    logits = t.program.logits(b["input_ids"])
    greedy = worker.greedy(t.program, b["input_ids"][:, :3])
    m = t.step(b)
    state = t.state_dict()
    second = t.step(toy.batch(1))
    return {"logits": logits, "greedy": greedy, "metrics": m, "state": state,
            "second": second}


@pytest.mark.parametrize("run", TP_RUNS)
def test_tp2_logits_and_greedy_tokens_equal_one_process(ranks, one, run):
    arrays, _ = ranks
    for r in range(2):
        assert rel(arrays[r][f"{run}/logits"], one["logits"]) < TOL, f"rank {r}"
        if not run.startswith("sp"):
            np.testing.assert_array_equal(arrays[r][f"{run}/greedy"], one["greedy"])


@pytest.mark.parametrize("run", TP_RUNS)
def test_tp2_training_step_equals_one_process(ranks, one, run):
    arrays, docs = ranks
    m, want = docs[0][f"{run}/metrics"], one["metrics"]
    assert abs(m["loss"] - want["loss"]) <= TOL * abs(want["loss"])
    assert abs(m["grad_norm"] - want["grad_norm"]) <= TOL * want["grad_norm"]
    assert want["grad_norm"] > 10 * worker.CONFIG["max_grad_norm"]  # the clip took effect
    assert m["tokens"] == want["tokens"]
    for r in range(2):
        for name, w in one["state"]["weights"].items():
            assert rel(arrays[r][f"{run}/w/{name}"], w) < TOL, (r, name)
        for key, v in one["state"]["optimizer"].items():
            if isinstance(v, np.ndarray) and v.ndim:
                assert rel(arrays[r][f"{run}/opt/{key}"], v) < TOL, (r, key)


def test_training_resumes_at_tp2_from_whole_tensors(ranks, one):
    _, docs = ranks
    want = one["second"]["loss"]
    assert abs(docs[0]["tp/resumed_loss"] - want) <= TOL * abs(want)


def test_dp2_on_half_the_rows_each_equals_one_process_on_all(ranks, one):
    arrays, docs = ranks
    m, want = docs[0]["dp/metrics"], one["metrics"]
    assert abs(m["loss"] - want["loss"]) <= TOL * abs(want["loss"])
    assert abs(m["grad_norm"] - want["grad_norm"]) <= TOL * want["grad_norm"]
    assert m["tokens"] == want["tokens"]
    for r in range(2):
        for name, w in one["state"]["weights"].items():
            assert rel(arrays[r][f"dp/w/{name}"], w) < TOL, (r, name)


def test_each_lowering_says_which_kernel_ran(ranks):
    _, docs = ranks
    kernels = docs[0]
    assert kernels["tp_mc2/kernels"]["matmul_all_reduce"].startswith(
        "matmul + paddle.distributed.all_reduce (no fused MC2 kernel on cpu)")
    assert kernels["npu_mc2/kernels"]["matmul_all_reduce"] == (
        "paddle_custom_device.npu.fused_mm_allreduce (MC2)")
    assert "ProcessGroupGloo has no reduce_scatter" in kernels["sp/kernels"]["reduce_scatter"]
    assert kernels["tp/kernels"]["shard"] == "parameters created from their slice at load"


def test_the_collectives_of_a_step_are_counted(ranks):
    _, docs = ranks
    b = toy.batch(0)
    rows, seq = b["input_ids"].shape
    act = rows * seq * toy.H * 4  # one f32 activation of the residual stream
    tp = docs[0]["tp/step_comm"]
    # forward: embedding, attention and MLP all_reduce; the logits' all_gather (a half each)
    assert tp["all_reduce"] == {"calls": 3, "bytes": 3 * act}
    assert tp["all_gather"] == {"calls": 1, "bytes": rows * seq * toy.V // 2 * 4}
    # backward: grad_all_reduce before q/kv, up and the head, and the gather's reduce_scatter
    # (gloo: an all_reduce of the whole logits); kv's replicated shard gathers its gradient
    assert tp["all_reduce (backward)"] == {"calls": 4, "bytes": 3 * act + rows * seq * toy.V * 4}
    assert tp["all_gather (backward)"] == {"calls": 1, "bytes": 4 * toy.H * 4}
    assert tp["all_reduce (tp scalars)"]["calls"] == 2  # the global norm: metrics and clip
    sp = docs[0]["sp/step_comm"]
    assert sp["all_gather"]["calls"] == 4  # before q/kv, up and the head; the logits
    decode = docs[0]["tp/decode_comm"]  # one token: 3 all_reduce and the logits gather
    assert decode == {"all_gather": {"calls": 1, "bytes": toy.V // 2 * 4},
                      "all_reduce": {"calls": 3, "bytes": 3 * toy.H * 4}}
