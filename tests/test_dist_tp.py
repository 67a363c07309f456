"""The tiny fixtures sharded by shard_tensor_parallel{tp=2} on 2 CPU processes (gloo),
launched once (tests/dist_tp_worker.py), against one process on the unsharded graph:
logits within 1e-5 relative; a training step's loss, global gradient norm and updated
weights within 1e-5 (llama GQA, with sequence parallel and recompute, Baichuan2-13B's
W_pack and ALiBi, PaddleNLP's fused qkv_proj); greedy tokens of the cache form identical."""

import json
from pathlib import Path

import numpy as np
import pytest

import dist_tp_worker as worker
from dist_tools import launch, rel

pytest.importorskip("paddle")
pytestmark = pytest.mark.dist

from llmc.runtime.paddle import PaddleCacheLM, TrainConfig, Trainer  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_tp")
    launch(Path(worker.__file__), out)
    return ([dict(np.load(out / f"rank{r}.npz")) for r in range(2)],
            [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)])


@pytest.mark.parametrize("name", list(worker.RUNS))
def test_tp2_logits_and_training_step_equal_one_process(ranks, name):
    arrays, docs = ranks
    arch, layout, _, recompute = worker.RUNS[name]
    cfg, g, w = worker.model(arch, layout, "full")
    trainer = Trainer(g, w, TrainConfig(**worker.CONFIG, recompute=recompute))
    b = worker.batch(cfg)
    logits = trainer.program.logits(b["input_ids"])
    m = trainer.step(b)
    got = docs[0][name]
    assert abs(got["loss"] - m["loss"]) <= TOL * m["loss"]
    assert abs(got["grad_norm"] - m["grad_norm"]) <= TOL * m["grad_norm"]
    assert m["grad_norm"] > worker.CONFIG["max_grad_norm"]  # the clip took effect
    for r in range(2):
        assert rel(arrays[r][f"{name}/logits"], logits) < TOL, r
        for k, v in trainer.state_dict()["weights"].items():
            assert rel(arrays[r][f"{name}/w/{k}"], v) < TOL, (r, k)


@pytest.mark.parametrize("name", worker.DECODE)
def test_tp2_greedy_decoding_equals_one_process(ranks, name):
    arrays, _ = ranks
    arch, layout, _, _ = worker.RUNS[name]
    cfg, g, w = worker.model(arch, layout, "cache")
    want = worker.greedy(PaddleCacheLM(g, w), worker.batch(cfg)["input_ids"][0, :5])
    for r in range(2):
        np.testing.assert_array_equal(arrays[r][f"{name}/greedy"], want)


def test_sequence_parallel_gathers_and_scatters_instead_of_all_reduce(ranks):
    _, docs = ranks
    tp, sp = docs[0]["llama_gqa"]["collectives"], docs[0]["llama_gqa_sp"]["collectives"]
    layers = 3  # the llama_gqa fixture; the SP run recomputes each layer's forward in backward
    assert tp["all_reduce"]["calls"] == 1 + 2 * layers  # embedding, attention out, ffn down
    assert tp["all_gather"]["calls"] == 1  # the logits
    assert sp["all_reduce"]["calls"] == 1 + 2 * 2 * layers  # gloo's reduce_scatter
    assert sp["all_gather"]["calls"] == 2 * 2 * layers + 2  # before qkv, gate/up; head; logits

