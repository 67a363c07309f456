"""`llmc import` / `llmc inspect`: IR text with checkpoint-named params, summaries, config-only."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from llmc import api
from llmc.frontends import fixtures as F
from llmc.frontends.weights import WeightStore
from clitools import run_cli

LLAMA2_13B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 5120,
              "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
              "intermediate_size": 13824, "vocab_size": 32000, "rms_norm_eps": 1e-5,
              "torch_dtype": "float16"}



@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("ck")
    return {fmt: F.write_fixture(base / fmt, "llama", fmt) for fmt in ("hf-numpy", "paddle")}


def test_import_writes_ir_with_checkpoint_names(monkeypatch, capsys, ckpts, tmp_path):
    out = tmp_path / "model.llmc"
    code, stdout, err = run_cli(monkeypatch, capsys, "import", ckpts["hf-numpy"], "-o", out,
                                "--json")
    assert code == 0, err
    s = json.loads(stdout)
    ref = F.random_weights("llama")
    assert s["architecture"] == "LlamaForCausalLM" and s["form"] == "full"
    assert s["params"] == sum(a.size for a in ref.values()) and s["dtype"] == "f32"
    assert s["bytes"] == 4 * s["params"] and s["weights"] == "checked"
    g = api.parse(out.read_text(), str(out))
    assert api.param_shapes(g) == {n: a.shape for n, a in ref.items()}
    assert [p.name for p in tmp_path.iterdir()] == ["model.llmc"]  # atomic: no temp files left


def test_import_paddle_inference_form(monkeypatch, capsys, ckpts, tmp_path):
    out = tmp_path / "inf.llmc"
    code, stdout, err = run_cli(monkeypatch, capsys, "import", ckpts["paddle"], "-o", out,
                                "--form", "inference")
    assert code == 0, err
    assert "LlamaForCausalLM" in stdout and "parameters" in stdout
    assert f"wrote         {out} (inference form" in stdout
    text = out.read_text()
    assert "param @llama.layers.0.self_attn.q_proj.weight: f32[64, 64]" in text
    assert "block_multihead_attention" in text


def test_hf_and_paddle_checkpoints_give_the_same_logits(ckpts):
    ids = np.array([[1, 5, 9, 42, 7]], np.int64)
    inputs = {"input_ids": ids, "position_ids": np.arange(5, dtype=np.int64)[None]}
    logits = []
    for fmt in ("hf-numpy", "paddle"):
        ck = api.open_model(ckpts[fmt])
        logits.append(api.run_reference(api.build_model_graph(ck), inputs, ck.weights)[0])
    assert logits[0].shape == (1, 5, 256) and np.isfinite(logits[0]).all()
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_inspect_writes_nothing(monkeypatch, capsys, ckpts, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(monkeypatch, capsys, "inspect", ckpts["paddle"])
    assert code == 0, err
    assert "llama2" in stdout and "pdparams" in stdout and "0.5 MiB" in stdout
    assert list(tmp_path.iterdir()) == []


def test_inspect_13b_config_only(monkeypatch, capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_13B))
    t0 = time.perf_counter()
    code, stdout, err = run_cli(monkeypatch, capsys, "inspect", "--config",
                                tmp_path / "config.json", "--json")
    elapsed = time.perf_counter() - t0
    assert code == 0, err
    s = json.loads(stdout)
    assert s["weights"] == "none (config only)" and s["format"] == "none" and s["files"] == []
    assert 13.0e9 < s["params"] < 13.1e9 and s["bytes"] == 2 * s["params"]
    assert s["model"] == "llama2" and s["layers"] == 40
    assert elapsed < 5.0


def test_config_only_import_has_unbacked_params(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    s = api.import_model(tmp_path / "config.json", tmp_path / "m.llmc")
    g = api.parse((tmp_path / "m.llmc").read_text())
    assert s["weights"] == "none (config only)" and len(g.params) == s["graph_params"] == 21
    assert not WeightStore(tmp_path).backed


def test_inspect_13b_bf16_checkpoint_reads_no_data(tmp_path):
    """26 GB of (sparse) bf16 weights: opening and validating only reads the header."""
    import os
    import struct

    from llmc.frontends.config import parse_config
    from llmc.frontends.loader import config_param_shapes
    from llmc.frontends.naming import HF

    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_13B))
    header, off = {}, 0
    for name, shape in config_param_shapes(parse_config(LLAMA2_13B), HF).items():
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    blob = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + off)
    if os.stat(path).st_blocks * 512 > 1 << 20:
        pytest.skip("filesystem without sparse files")
    t0 = time.perf_counter()
    s = api.inspect_model(tmp_path)
    assert time.perf_counter() - t0 < 5.0
    assert s["weights"] == "checked" and s["dtype"] == "bf16" and s["bytes"] == off
    assert s["graph_params"] == 363
