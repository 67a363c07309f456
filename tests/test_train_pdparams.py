"""`llmc train --save-format pdparams|both`: PaddleNLP's model_state.pdparams layout.

What is checked here: `paddle.load` opens the file and holds exactly the state llmc meant to
write; llmc's own loader reads the directory back (PaddleNLP names, Linear [in, out]) into
the same model as the HF save (same logits; the same weights after undoing the layout);
the mapping follows PaddleNLP's `_get_name_mappings` for Llama (transpose of every Linear and
of an untied lm_head, `llama.` prefix). PaddleNLP itself is not installed here, so no test
loads these files with PaddleNLP's `from_pretrained`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clitools import run_cli

paddle = pytest.importorskip("paddle")

from llmc.compile import build_graph  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.data.synthetic import write_tiny_corpus  # noqa: E402
from llmc.frontends.loader import open_checkpoint  # noqa: E402
from llmc.paddlenlp_export import (PDPARAMS_FILE, from_paddlenlp, load_pdparams,  # noqa: E402
                                   paddlenlp_config, save_pdparams, to_paddlenlp)
from llmc.runtime.paddle import PaddleProgram  # noqa: E402

IDS = np.array([[1, 5, 9, 14, 3, 7, 22, 40], [1, 8, 8, 2, 17, 30, 4, 11]])
PRETRAIN = ("--mode", "pretrain", "--batch-size", "2", "--seq-len", "16", "--lr", "1e-3")


def logits(model_dir):
    ck = open_checkpoint(model_dir)
    g = build_graph(ck.config, ck.naming, "full", last_token_only=False)
    return PaddleProgram(g, {n: ck.weights[n] for n in g.params}).logits(IDS), ck


def write_paddlenlp(src, out):
    ck = open_checkpoint(src)
    g = build_graph(ck.config, ck.naming, "full", last_token_only=False)
    weights = {n: np.asarray(ck.weights[n], np.float32) for n in g.params}
    out.mkdir()
    state = to_paddlenlp(weights, ck.config, ck.naming)
    save_pdparams(out / PDPARAMS_FILE, state)
    (out / "config.json").write_text(json.dumps(paddlenlp_config(ck.config, ck.naming)))
    return ck, weights, state


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_paddlenlp_layout_reads_back_as_the_same_model(arch, tmp_path):
    src = fixtures.write_fixture(tmp_path / "hf", arch)
    ck, weights, state = write_paddlenlp(src, tmp_path / "pd")
    loaded = paddle.load(str(tmp_path / "pd" / PDPARAMS_FILE))
    assert set(loaded) == set(state)
    for name, t in loaded.items():
        np.testing.assert_array_equal(t.numpy(), state[name], err_msg=name)
    theirs, back = logits(tmp_path / "pd")
    assert back.naming.prefix == "llama." and back.naming.linear_in_out
    assert back.config.position == ck.config.position
    ours, _ = logits(src)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_layout_follows_paddlenlps_llama_mapping(tmp_path):
    src = fixtures.write_fixture(tmp_path / "hf", "llama_gqa")
    ck, weights, state = write_paddlenlp(src, tmp_path / "pd")
    q = weights["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(state["llama.layers.1.self_attn.q_proj.weight"], q.T)
    np.testing.assert_array_equal(state["lm_head.weight"], weights["lm_head.weight"].T)
    np.testing.assert_array_equal(state["llama.norm.weight"], weights["model.norm.weight"])
    assert not any(n.startswith("model.") for n in state)
    back = from_paddlenlp(load_pdparams(tmp_path / "pd" / PDPARAMS_FILE), ck.config,
                          ck.naming, list(weights))
    assert all(np.array_equal(back[n], weights[n]) for n in weights)


def test_baichuans_w_pack_is_split_and_its_normhead_stored_normalised(tmp_path):
    src = fixtures.write_fixture(tmp_path / "hf", "baichuan2_7b")
    ck, weights, state = write_paddlenlp(src, tmp_path / "pd")
    h = ck.config.hidden_size
    packed = weights["model.layers.0.self_attn.W_pack.weight"]
    np.testing.assert_array_equal(state["llama.layers.0.self_attn.k_proj.weight"],
                                  packed[h:2 * h].T)
    head = state["lm_head.weight"]  # [hidden, vocab]: each vocab column has unit norm
    np.testing.assert_allclose(np.linalg.norm(head, axis=0), 1.0, atol=1e-5)
    assert "alibi" not in paddlenlp_config(ck.config, ck.naming)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pdtrain")
    return {"model": fixtures.write_fixture(d / "model", "llama_gqa"),
            "corpus": write_tiny_corpus(d / "c.jsonl")}


def train(monkeypatch, capsys, data, out, *args):
    code, stdout, err = run_cli(monkeypatch, capsys, "train", data["model"], "--data",
                                data["corpus"], "-o", out, *PRETRAIN, *args, "--json")
    assert code == 0, err
    return json.loads(stdout)


def test_save_format_both_writes_hf_and_paddlenlp_of_the_same_weights(monkeypatch, capsys,
                                                                       data, tmp_path):
    train(monkeypatch, capsys, data, tmp_path / "run", "--steps", "2", "--save-format", "both")
    ck_dir = tmp_path / "run" / "checkpoint-2"
    assert (ck_dir / "model.safetensors").is_file()
    assert {p.name for p in (ck_dir / "paddlenlp").iterdir()} >= {"config.json", PDPARAMS_FILE}
    hf, hf_ck = logits(ck_dir)
    pd, _ = logits(ck_dir / "paddlenlp")
    base, _ = logits(data["model"])
    assert np.abs(hf - base).max() > 1e-3  # the weights trained
    np.testing.assert_allclose(pd, hf, atol=1e-5, rtol=0)
    loaded = paddle.load(str(ck_dir / "paddlenlp" / PDPARAMS_FILE))
    np.testing.assert_array_equal(loaded["llama.layers.0.mlp.down_proj.weight"].numpy(),
                                  np.asarray(hf_ck.weights["model.layers.0.mlp.down_proj.weight"]).T)


def test_resume_from_a_pdparams_only_checkpoint_repeats_the_curve(monkeypatch, capsys, data,
                                                                   tmp_path):
    args = ("--steps", "4", "--save-every", "2", "--save-format", "pdparams")
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(monkeypatch, capsys, data, whole, *args)
    assert not (whole / "checkpoint-4" / "model.safetensors").exists()
    assert (whole / "checkpoint-4" / PDPARAMS_FILE).is_file()
    train(monkeypatch, capsys, data, part, *args)
    import shutil

    shutil.rmtree(part / "checkpoint-4")
    report = train(monkeypatch, capsys, data, part, *args, "--resume")
    assert report["first_step"] == 2
    curve = [json.loads(ln)["loss"] for ln in (part / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(ln)["loss"] for ln in (whole / "metrics.jsonl").read_text().splitlines()]
    assert curve == want


@pytest.mark.parametrize("args,needle", [
    (("--mode", "lora", "--save-format", "both"), "lora mode saves PEFT adapters only"),
    (("--save-format", "pdparams"), "NormHead rows are stored normalised"),
])
def test_refusals_are_one_line(monkeypatch, capsys, tmp_path, data, args, needle):
    model = data["model"] if "lora" in args else fixtures.write_fixture(tmp_path / "bc",
                                                                        "baichuan2_7b")
    capsys.readouterr()
    code, _, err = run_cli(monkeypatch, capsys, "train", model, "--data", data["corpus"], "-o",
                           tmp_path / "out", "--steps", "1", *PRETRAIN[:2], *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
