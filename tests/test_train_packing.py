"""`llmc train --pack`: several SFT examples per row, attention masked across them
(llmc/segment_mask.py). A packed batch gives the loss and gradients of the same examples
unpacked (one per row), for RoPE (llama GQA) and ALiBi (Baichuan2-13B); without the segment
mask it would not. Through the CLI packed SFT trains, and pretraining refuses --pack."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clitools import run_cli

pytest.importorskip("paddle")

from llmc.compile import build_graph  # noqa: E402
from llmc.compiler.errors import LlmcError  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.config import parse_config  # noqa: E402
from llmc.frontends.data import IGNORE_INDEX, SFTExample, collate  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_corpus, write_tiny_sft  # noqa: E402
from llmc.frontends.naming import naming_for  # noqa: E402
from llmc.runtime.paddle import TrainConfig, Trainer  # noqa: E402
from llmc.segment_mask import add_segment_mask  # noqa: E402
from llmc.training import trainer_batch  # noqa: E402

PAD = 0


def examples(vocab, lengths=(5, 9, 4, 7), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(3, vocab, n + 1)
        labels = ids[1:].copy()
        labels[: n // 3] = IGNORE_INDEX  # a masked prompt
        out.append(SFTExample(ids[:-1], labels))
    return out


def graphs(arch):
    cfg = parse_config(fixtures.tiny_config(arch))
    plain = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=False)
    packed = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=False)
    add_segment_mask(packed)
    w = fixtures.random_weights(arch, seed=0)
    return cfg, plain, packed, {k: w[k] for k in plain.params}


def loss_and_norm(graph, weights, batch):
    t = Trainer(graph, weights, TrainConfig())
    b = {k: v for k, v in batch.items() if k != "segment_ids" or "segment_ids" in t.inputs}
    total, n = t.loss_sum(b["input_ids"], b["labels"], b.get("position_ids"),
                          b.get("segment_ids"))
    (total / n).backward()
    return float(total) / n, n, t.grad_norm()


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_a_packed_batch_gives_the_unpacked_loss_and_gradients(arch):
    cfg, plain, packed, w = graphs(arch)
    ex = examples(cfg.vocab_size)
    rows = trainer_batch(collate([[e] for e in ex], PAD), PAD)
    packed_batch = trainer_batch(collate([ex[:2], ex[2:]], PAD), PAD, segments=True)
    assert packed_batch["input_ids"].shape[0] == 2 and packed_batch["segment_ids"].max() == 2
    want = loss_and_norm(plain, w, rows)
    got = loss_and_norm(packed, w, packed_batch)
    assert got[1] == want[1]
    assert abs(got[0] - want[0]) <= 1e-5 * want[0]
    assert abs(got[2] - want[2]) <= 1e-4 * want[2]
    # the same rows with one segment each: examples see each other, and the loss moves
    leaky = dict(packed_batch, segment_ids=(packed_batch["segment_ids"] > 0).astype(np.int64))
    assert abs(loss_and_norm(packed, w, leaky)[0] - want[0]) > 1e-3 * want[0]


def test_trainer_batch_extends_positions_and_segments_by_one_column():
    batch = collate([examples(50, (3, 2))], PAD)
    t = trainer_batch(batch, PAD, segments=True)
    np.testing.assert_array_equal(t["position_ids"][0], [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(t["segment_ids"][0], [1, 1, 1, 2, 2, 2])


def test_a_graph_is_packed_once():
    _, _, packed, _ = graphs("llama")
    with pytest.raises(LlmcError, match="already takes segment_ids"):
        add_segment_mask(packed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    return {"model": fixtures.write_fixture(d / "model", "llama_gqa"),
            "sft": write_tiny_sft(d / "sft.jsonl"), "corpus": write_tiny_corpus(d / "c.jsonl")}


def test_packed_sft_trains_through_the_cli(monkeypatch, capsys, files, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                             files["sft"], "-o", tmp_path / "run", "--pack", "--steps", "8",
                             "--lr", "3e-3", "--batch-size", "2", "--seq-len", "64", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["rows"] < report["data"]["examples"]  # several examples per row
    losses = [m["loss"] for m in report["metrics"]]
    assert losses[-1] < 0.8 * losses[0], losses
    state = json.loads((tmp_path / "run" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["data"]["pack"] is True


def test_pack_with_pretraining_is_refused(monkeypatch, capsys, files, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                           files["corpus"], "-o", tmp_path / "run", "--mode", "pretrain",
                           "--pack", "--steps", "1")
    assert code == 2 and err.count("\n") == 1 and "--pack is for sft and lora" in err, err
