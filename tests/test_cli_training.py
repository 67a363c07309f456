"""`llmc train` end to end on a tiny fixture: SFT drives the loss down; the checkpoint loads
in transformers (logits = llmc's Paddle logits) and generates through `llmc compile` +
`llmc generate`; LoRA saves an adapter PEFT loads; resume repeats the uninterrupted loss
curve exactly; bad input is one line and exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from clitools import run_cli

pytest.importorskip("paddle")

from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_corpus, write_tiny_sft  # noqa: E402
from llmc.training import trainer_batch  # noqa: E402

IDS = np.array([[1, 5, 9, 14, 3, 7, 22, 40], [1, 8, 8, 2, 17, 30, 4, 11]])
SFT = ("--mode", "sft", "--lr", "3e-3", "--batch-size", "8", "--seq-len", "64")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    return {"model": fixtures.write_fixture(d / "model", "llama_gqa"),
            "sft": write_tiny_sft(d / "sft.jsonl"), "corpus": write_tiny_corpus(d / "c.jsonl")}


def train(monkeypatch, capsys, model, data, out, *args):
    code, stdout, err = run_cli(monkeypatch, capsys, "train", model, "--data", data, "-o", out,
                                *args, "--json")
    assert code == 0, err
    return json.loads(stdout)


def losses(out):
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    mp = pytest.MonkeyPatch()
    try:
        from llmc.cli import main
        import sys

        mp.setattr(sys, "argv", ["llmc", "train", str(files["model"]), "--data",
                                 str(files["sft"]), "-o", str(out), "--steps", "30",
                                 "--save-every", "10", "--save-total-limit", "2", *SFT])
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 0
    finally:
        mp.undo()
    return out


def test_sft_halves_the_loss_and_keeps_the_newest_checkpoints(sft_run):
    curve = losses(sft_run)
    assert len(curve) == 30 and curve[-1] <= 0.5 * curve[0], curve
    assert sorted(p.name for p in sft_run.glob("checkpoint-*")) == ["checkpoint-20",
                                                                     "checkpoint-30"]
    assert not list(sft_run.glob(".checkpoint-*"))  # no temporary directory left behind


def test_checkpoint_loads_in_transformers_with_llmcs_logits(sft_run, files):
    import reference_models as rm

    from llmc.compile import build_graph
    from llmc.frontends.loader import open_checkpoint
    from llmc.runtime.paddle import PaddleProgram

    ck_dir = sft_run / "checkpoint-30"
    ck = open_checkpoint(ck_dir)
    g = build_graph(ck.config, ck.naming, "full", last_token_only=False)
    ours = PaddleProgram(g, {n: ck.weights[n] for n in g.params}).logits(IDS)
    with torch.no_grad():
        theirs = rm.load_hf_model(ck_dir)(torch.as_tensor(IDS)).logits.numpy()
    base = rm.load_hf_model(files["model"])(torch.as_tensor(IDS)).logits.detach().numpy()
    assert np.abs(theirs - base).max() > 1e-2  # the weights did change
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_checkpoint_compiles_and_generates(monkeypatch, capsys, sft_run, tmp_path):
    art = tmp_path / "art"
    code, _, err = run_cli(monkeypatch, capsys, "compile", sft_run / "checkpoint-30",
                           "--target", "cpu", "-o", art)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, "--prompt",
                             "Repeat: fox dog", "-n", "6", "--runtime", "reference", "--json")
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert len(result["new_ids"]) >= 1


def test_data_labels_are_shifted_exactly_once():
    batch = {"input_ids": np.array([[1, 10, 11, 12]]), "labels": np.array([[-100, 11, 12, 2]])}
    t = trainer_batch(batch, pad_id=0)
    # the Trainer scores logits[i] against labels[i + 1]: those must be the data's labels[i]
    np.testing.assert_array_equal(t["labels"][:, 1:], batch["labels"])
    np.testing.assert_array_equal(t["input_ids"][:, :-1], batch["input_ids"])


def test_lora_adapter_loads_in_peft(monkeypatch, capsys, files, tmp_path):
    peft = pytest.importorskip("peft")
    import reference_models as rm

    from llmc.frontends.loader import open_checkpoint
    from llmc.lora import lora_graph
    from llmc.runtime.paddle import PaddleProgram

    out = tmp_path / "lora"
    report = train(monkeypatch, capsys, files["model"], files["sft"], out, "--steps", "4",
                   *SFT, "--mode", "lora", "--lora-targets", "q,v,down", "--lora-rank", "4")
    adapter = out / "checkpoint-4"
    assert report["final_loss"] < report["metrics"][0]["loss"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()}
    g, w = lora_graph(open_checkpoint(files["model"]), adapter)
    ours = PaddleProgram(g, {n: w[n] for n in g.params}).logits(IDS)
    model = peft.PeftModel.from_pretrained(rm.load_hf_model(files["model"]), str(adapter)).eval()
    with torch.no_grad():
        theirs = model(torch.as_tensor(IDS)).logits.numpy()
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() / scale < 1e-5


def test_resume_repeats_the_uninterrupted_curve(monkeypatch, capsys, files, tmp_path):
    args = ("--mode", "pretrain", "--steps", "6", "--save-every", "3", "--batch-size", "2",
            "--seq-len", "16", "--lr", "1e-3", "--warmup-steps", "2")
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(monkeypatch, capsys, files["model"], files["corpus"], whole, *args)
    train(monkeypatch, capsys, files["model"], files["corpus"], part, *args)
    shutil.rmtree(part / "checkpoint-6")  # as if the run died after step 3's checkpoint
    report = train(monkeypatch, capsys, files["model"], files["corpus"], part, *args, "--resume")
    assert report["first_step"] == 3 and len(report["metrics"]) == 3
    assert losses(part) == losses(whole)


def test_resume_refuses_another_model(monkeypatch, capsys, files, tmp_path):
    out = tmp_path / "run"
    train(monkeypatch, capsys, files["model"], files["corpus"], out, "--mode", "pretrain",
          "--steps", "1", "--seq-len", "16", "--batch-size", "1")
    other = fixtures.write_fixture(tmp_path / "other", "llama")
    capsys.readouterr()
    code, _, err = run_cli(monkeypatch, capsys, "train", other, "--data", files["corpus"], "-o",
                           out, "--mode", "pretrain", "--steps", "2", "--seq-len", "16",
                           "--resume")
    assert code == 2 and err.count("\n") == 1 and "another model" in err, err


@pytest.mark.parametrize("line", ["{not json", '{"src": "a"}', '{"src": 3, "tgt": "b"}'])
def test_bad_sft_line_is_one_line_exit_2(monkeypatch, capsys, files, tmp_path, line):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"src": "hello", "tgt": "world"}\n' + line + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data", data, "-o",
                           tmp_path / "out", "--steps", "1")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{data}:2" in err


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(monkeypatch, capsys, files,
                                                             tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data", files["sft"],
                           "-o", out, "--steps", "6", "--save-every", "1", "--lr", "1e30",
                           "--max-grad-norm", "0", "--schedule", "constant", *SFT[:1], "sft")
    assert code == 2 and err.count("\n") == 1, err
    assert "loss is" in err and "last good checkpoint" in err
    kept = sorted(out.glob("checkpoint-*"))
    assert kept and all((p / "model.safetensors").is_file() for p in kept)


def test_output_inside_the_model_is_refused(monkeypatch, capsys, files):
    code, _, err = run_cli(monkeypatch, capsys, "train", files["model"], "--data", files["sft"],
                           "-o", files["model"] / "run", "--steps", "1")
    assert code == 2 and err.count("\n") == 1 and "checkpoint directory" in err, err
    assert not (files["model"] / "run").exists()


def test_pretrain_reads_paddlenlps_mmap_corpus(monkeypatch, capsys, files, tmp_path):
    from llmc.frontends.data import prepare
    from llmc.frontends.tokenizer import load_tokenizer

    prefix = tmp_path / "corpus" / "train"
    prepare(files["corpus"], prefix, load_tokenizer(files["model"]))
    report = train(monkeypatch, capsys, files["model"], prefix, tmp_path / "run", "--mode",
                   "pretrain", "--steps", "2", "--seq-len", "16", "--batch-size", "2")
    assert report["data"]["tokens"] > 32 and len(report["metrics"]) == 2
    assert report["metrics"][0]["tokens"] == 2 * 17  # 16 inputs + the last window token


def test_paddle_format_checkpoint_trains_and_compiles(monkeypatch, capsys, files, tmp_path):
    model = fixtures.write_fixture(tmp_path / "pd", "llama", "paddle")
    capsys.readouterr()
    train(monkeypatch, capsys, model, files["corpus"], tmp_path / "run", "--mode", "pretrain",
          "--steps", "1", "--seq-len", "16", "--batch-size", "1")
    code, _, err = run_cli(monkeypatch, capsys, "compile", tmp_path / "run" / "checkpoint-1",
                           "--target", "cpu", "-o", tmp_path / "art")
    assert code == 0, err


def test_progress_bar_shows_loss_lr_speed_and_eta(capsys):
    from llmc.cli_training import progress_bar

    with progress_bar(4, enabled=True) as on_step:
        on_step({"step": 2, "loss": 1.2345, "lr": 3e-4, "tokens_per_s": 512.0})
    err = capsys.readouterr().err
    assert "2/4" in err and "loss 1.2345" in err and "lr 3.00e-04" in err and "512 tok/s" in err
    with progress_bar(4, enabled=False) as on_step:
        on_step({"step": 1})  # off: the callback ignores the metrics
    assert capsys.readouterr().err == ""
