"""LoRA dropout (PEFT's lora_B(lora_A(dropout(x))), training steps only) and the random
generators' state in checkpoints: dropout changes a training step, is reproducible by seed,
touches only the adapter branch, and is off in eval, merge and inference; `--resume` restores
the generators, so a run with dropout repeats the uninterrupted curve exactly (and would not
without the restore)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from clitools import run_cli

pytest.importorskip("paddle")

from llmc.compile import build_graph  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.config import parse_config  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_sft  # noqa: E402
from llmc.frontends.naming import naming_for  # noqa: E402
from llmc.lora import add_lora  # noqa: E402
from llmc.passes.lora import init_lora_weights, lora_params  # noqa: E402
from llmc.runtime.paddle import PaddleProgram, TrainConfig, Trainer, import_paddle  # noqa: E402
from llmc.runtime.paddle.train_rng import rng_state, set_rng_state  # noqa: E402

IDS = np.random.default_rng(1).integers(3, 250, size=(2, 12))


def lora_setup(b_scale=0.0):
    cfg = parse_config(fixtures.tiny_config("llama_gqa"))
    g = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=False)
    add_lora(g, "q,v,down", rank=4, alpha=8.0, num_layers=cfg.num_layers)
    w = fixtures.random_weights("llama_gqa", seed=0)
    w = {**{k: w[k] for k in g.params if k in w}, **init_lora_weights(g, seed=0)}
    rng = np.random.default_rng(2)
    for n in lora_params(g):
        if n.endswith("lora_B.weight"):
            w[n] = (b_scale * rng.normal(size=w[n].shape)).astype(np.float32)
    return g, w


def trainer(g, w, p, seed=0):
    rates = {n: p for n in lora_params(g) if n.endswith(".lora_A.weight")}
    t = Trainer(g, w, TrainConfig(lr=1e-2, seed=seed, input_dropout=rates))
    for name, param in t.program.params.items():
        param.stop_gradient = name not in set(lora_params(g))
    return t


def loss(t):
    total, n = t.loss_sum(IDS, IDS)
    return float(total) / n


def test_dropout_touches_only_the_adapter_branch():
    g, w = lora_setup(b_scale=0.0)  # B = 0: the adapter adds nothing, dropped out or not
    assert loss(trainer(g, w, 0.5)) == loss(trainer(g, w, 0.0))
    g, w = lora_setup(b_scale=0.5)
    assert abs(loss(trainer(g, w, 0.5)) - loss(trainer(g, w, 0.0))) > 1e-4


def step_weights(p, seed):
    g, w = lora_setup(b_scale=0.0)  # PEFT's init: B = 0, yet B's gradient sees the dropout
    t = trainer(g, w, p, seed)
    t.step({"input_ids": IDS})
    t.step({"input_ids": IDS})
    return t.program.state_dict(), t


def test_dropout_changes_the_step_and_is_reproducible_by_seed():
    plain, _ = step_weights(0.0, 0)
    first, _ = step_weights(0.3, 0)
    again, _ = step_weights(0.3, 0)
    other, _ = step_weights(0.3, 1)
    b = [n for n in first if n.endswith("lora_B.weight")]
    assert all(np.array_equal(first[n], again[n]) for n in first)
    assert max(np.abs(first[n] - plain[n]).max() for n in b) > 1e-4
    assert max(np.abs(first[n] - other[n]).max() for n in b) > 1e-4


def test_eval_and_inference_ignore_dropout():
    _, t = step_weights(0.5, 0)
    weights = t.program.state_dict()
    twice = [t.program.logits(IDS) for _ in range(2)]  # the trainer's own program, no step
    plain = PaddleProgram(t.program.graph, weights).logits(IDS)
    np.testing.assert_array_equal(twice[0], twice[1])
    np.testing.assert_array_equal(twice[0], plain)
    assert loss(t) != loss(t)  # ... while a training forward draws a new mask each time


def test_merge_ignores_the_recorded_dropout(tmp_path):
    from llmc.frontends.loader import open_checkpoint
    from llmc.frontends.llama import build_full
    from llmc.lora import save_lora
    from llmc.merge import merge

    base = fixtures.write_fixture(tmp_path / "base", "llama_gqa")
    ck = open_checkpoint(base)
    merged = []
    for p in (0.0, 0.4):
        g = build_full(ck.config, ck.naming)
        recorded = add_lora(g, "q,v", rank=2, alpha=4.0, dropout=p)
        rng = np.random.default_rng(3)
        w = {n: rng.normal(0, 0.2, g.params[n].type.shape).astype(np.float32)
             for n in lora_params(g)}
        adapter = save_lora(tmp_path / f"a{p}", recorded, w, str(base))
        assert json.loads((adapter / "adapter_config.json").read_text())["lora_dropout"] == p
        merge(base, adapter, tmp_path / f"m{p}")
        merged.append(open_checkpoint(tmp_path / f"m{p}").weights)
    name = "model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(merged[0][name], merged[1][name])


def test_rng_state_round_trips_through_json():
    paddle = import_paddle()
    paddle.seed(11)
    np.random.seed(4)
    random.seed(5)
    saved = json.loads(json.dumps(rng_state(paddle)))
    drawn = (paddle.rand([4]).numpy(), np.random.rand(3), random.random())
    set_rng_state(paddle, saved)
    again = (paddle.rand([4]).numpy(), np.random.rand(3), random.random())
    np.testing.assert_array_equal(drawn[0], again[0])
    np.testing.assert_array_equal(drawn[1], again[1])
    assert drawn[2] == again[2]


def test_a_corrupt_rng_state_is_refused():
    paddle = import_paddle()
    bad = rng_state(paddle)
    del bad["numpy"]["keys"]
    with pytest.raises(Exception, match="trainer_state.json: corrupt random generator state"):
        set_rng_state(paddle, bad, "trainer_state.json")


LORA = ("--mode", "lora", "--lora-targets", "q,v", "--lora-rank", "4", "--lora-dropout", "0.3",
        "--lr", "1e-2", "--batch-size", "4", "--seq-len", "48", "--steps", "4",
        "--save-every", "2")


def run(monkeypatch, capsys, files, out, *args):
    code, stdout, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                                files["sft"], "-o", out, *LORA, *args, "--json")
    assert code == 0, err
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dropout")
    return {"model": fixtures.write_fixture(d / "model", "llama_gqa"),
            "sft": write_tiny_sft(d / "sft.jsonl")}


def test_resume_with_dropout_repeats_the_curve_only_with_the_rng_restored(monkeypatch, capsys,
                                                                         files, tmp_path):
    whole = run(monkeypatch, capsys, files, tmp_path / "whole")
    state = json.loads((tmp_path / "whole" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["rng"]["paddle"] and "keys" in state["rng"]["numpy"]
    for name, restore in (("restored", True), ("not_restored", False)):
        out = tmp_path / name
        shutil.copytree(tmp_path / "whole", out)
        shutil.rmtree(out / "checkpoint-4")
        with monkeypatch.context() as mp:
            if not restore:
                mp.setattr("llmc.runtime.paddle.train.set_rng_state", lambda *a, **k: None)
            curve = run(monkeypatch, capsys, files, out, "--resume")
        if restore:
            assert curve == whole
        else:
            assert curve[:2] == whole[:2] and curve[2:] != whole[2:]
