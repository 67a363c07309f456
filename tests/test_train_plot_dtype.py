"""The loss-curve PNG at the end of `llmc train` (matplotlib, Agg, written atomically; without
matplotlib one note line and no PNG), and `--dtype`: fp32, or bf16 passed to Paddle's
autocast where the device runs bf16 matmuls; refused on CPU with the measured reason."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from clitools import run_cli

pytest.importorskip("paddle")

from llmc.compile import build_graph  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.config import parse_config  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_corpus  # noqa: E402
from llmc.frontends.naming import naming_for  # noqa: E402
from llmc.lora import add_lora  # noqa: E402
from llmc.runtime.paddle import TrainConfig, Trainer  # noqa: E402
from llmc.train_plot import DPI, SIZE_INCHES, plot_loss  # noqa: E402
from llmc.training import Model, TrainOptions, train_config  # noqa: E402

ARGS = ("--mode", "pretrain", "--steps", "3", "--batch-size", "1", "--seq-len", "16")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("plot")
    return {"model": fixtures.write_fixture(d / "model", "llama"),
            "corpus": write_tiny_corpus(d / "c.jsonl")}


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"  # the whole file, not a cut one
    return struct.unpack(">II", data[16:24])


def test_train_writes_the_loss_curve_png(monkeypatch, capsys, files, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    code, stdout, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                                files["corpus"], "-o", out, *ARGS)
    assert code == 0, err
    assert f"loss curve: {out / 'loss.png'}" in stdout
    assert png_size(out / "loss.png") == (SIZE_INCHES[0] * DPI, SIZE_INCHES[1] * DPI)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_without_matplotlib_one_note_line_and_no_png(monkeypatch, capsys, files, tmp_path):
    monkeypatch.setattr("llmc.train_plot.pyplot", lambda: None)
    out = tmp_path / "run"
    code, stdout, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                                files["corpus"], "-o", out, *ARGS)
    assert code == 0, err
    notes = [ln for ln in stdout.splitlines() if ln.startswith("loss curve:")]
    assert notes == ["loss curve: skipped (matplotlib is not installed: "
                     "pip install 'llmc[plot]')"]
    assert not (out / "loss.png").exists()


def test_plot_replaces_an_old_png_whole(tmp_path):
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i, "loss": 3.0 / i}) + "\n"
                               for i in range(1, 6)))
    png = tmp_path / "loss.png"
    png.write_bytes(b"old")
    assert plot_loss(metrics, png) == str(png)
    assert png_size(png) == (600, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]


def graph_model(arch="llama", lora_dropout=None):
    cfg = parse_config(fixtures.tiny_config(arch))
    g = build_graph(cfg, naming_for(cfg.source_format), "full", last_token_only=False)
    lora = None if lora_dropout is None else add_lora(g, "q,down", 2, 4.0, lora_dropout)
    return Model(ckpt=None, graph=g, weights={}, lora=lora)


@pytest.mark.parametrize("device", ["gpu", "npu", "mlu", "iluvatar_gpu"])
def test_bf16_maps_to_paddles_bf16_autocast_on_accelerators(device, tmp_path):
    opts = TrainOptions(tmp_path, tmp_path, tmp_path, device=device, dtype="bf16")
    config = train_config(opts, graph_model())
    assert (config.dtype, config.device) == ("bfloat16", device)
    assert config.autocast_args() == {"enable": True, "dtype": "bfloat16", "level": "O1"}
    fp32 = train_config(TrainOptions(tmp_path, tmp_path, tmp_path, device=device), graph_model())
    assert fp32.dtype == "float32" and fp32.autocast_args()["enable"] is False


def test_lora_dropout_goes_on_the_adapters_a_weights_only(tmp_path):
    model = graph_model(lora_dropout=0.25)
    config = train_config(TrainOptions(tmp_path, tmp_path, tmp_path, mode="lora"), model)
    assert config.input_dropout and set(config.input_dropout.values()) == {0.25}
    assert all(n.endswith(".lora_A.weight") for n in config.input_dropout)
    assert len(config.input_dropout) == 2 * parse_config(fixtures.tiny_config("llama")).num_layers


@pytest.mark.filterwarnings("ignore:amp_guard can only be enabled")
def test_the_trainer_hands_bf16_to_paddles_autocast(monkeypatch):
    """Where the device has bf16 (faked here: the probe says so), every forward of a step runs
    inside paddle.amp.auto_cast(enable=True, dtype='bfloat16', level='O1')."""
    import paddle

    model = graph_model()
    cfg = parse_config(fixtures.tiny_config("llama"))
    w = fixtures.random_weights("llama", seed=0)
    monkeypatch.setattr("llmc.runtime.paddle.train.bf16_unavailable", lambda *a: None)
    seen = []
    real = paddle.amp.auto_cast

    def spy(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(paddle.amp, "auto_cast", spy)
    t = Trainer(model.graph, {k: w[k] for k in model.graph.params},
                TrainConfig(dtype="bfloat16", accumulation_steps=2))
    t.step({"input_ids": np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6))})
    assert seen == [{"enable": True, "dtype": "bfloat16", "level": "O1"}] * 2


def test_bf16_on_cpu_is_one_line_saying_why(monkeypatch, capsys, files, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data",
                           files["corpus"], "-o", tmp_path / "run", *ARGS, "--dtype", "bf16")
    assert code == 2 and err.count("\n") == 1, err
    assert "dtype bfloat16 on cpu" in err and "leaves matmuls in float32" in err
    assert "no bfloat16 matmul kernel" in err and "train in float32" in err
