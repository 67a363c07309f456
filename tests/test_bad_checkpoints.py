"""Bad checkpoints: each is one line naming the file (and tensor), exit code 2, no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llmc.frontends import fixtures as F
from clitools import run_cli



def edit_weights(model, fn) -> None:
    path = model / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def edit_config(model, **changes) -> None:
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))


def expect_error(monkeypatch, capsys, model, *needles: str, cmd: str = "inspect",
                 extra: tuple = ()) -> str:
    code, out, err = run_cli(monkeypatch, capsys, cmd, model, *extra)
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_good_checkpoint_passes(monkeypatch, capsys, model):
    code, out, err = run_cli(monkeypatch, capsys, "inspect", model, "--json")
    assert code == 0 and json.loads(out)["weights"] == "checked"


def test_missing_config(monkeypatch, capsys, model):
    (model / "config.json").unlink()
    expect_error(monkeypatch, capsys, model, "config.json: no such file")


def test_malformed_json(monkeypatch, capsys, model):
    (model / "config.json").write_text('{"hidden_size": 64,\n "vocab_size": }')
    expect_error(monkeypatch, capsys, model, "config.json:2:", "malformed JSON")


def test_unknown_architecture(monkeypatch, capsys, model):
    edit_config(model, architectures=["MistralForCausalLM"], model_type="mistral")
    expect_error(monkeypatch, capsys, model, "config.json", "MistralForCausalLM",
                 "LlamaForCausalLM", "BaichuanForCausalLM")


def test_missing_tensor(monkeypatch, capsys, model):
    edit_weights(model, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    expect_error(monkeypatch, capsys, model, "model.safetensors",
                 "'model.layers.1.mlp.up_proj.weight' is missing")


def test_extra_tensor(monkeypatch, capsys, model):
    extra = {"model.layers.9.mlp.up_proj.weight": np.zeros((2, 2), np.float32)}
    edit_weights(model, lambda t: t.update(extra))
    expect_error(monkeypatch, capsys, model, "model.safetensors",
                 "unexpected tensor 'model.layers.9.mlp.up_proj.weight'")


def test_wrong_shape(monkeypatch, capsys, model):
    def transpose(t):
        name = "model.layers.0.mlp.down_proj.weight"
        t[name] = np.ascontiguousarray(t[name].T)

    edit_weights(model, transpose)
    expect_error(monkeypatch, capsys, model, "model.safetensors",
                 "'model.layers.0.mlp.down_proj.weight' has shape [176, 64], expected [64, 176]")


def test_wrong_dtype(monkeypatch, capsys, model):
    edit_weights(model, lambda t: t.update({"model.norm.weight": np.ones(64, np.int64)}))
    expect_error(monkeypatch, capsys, model, "model.safetensors",
                 "'model.norm.weight' has dtype i64, expected a float type")


def test_several_problems_are_counted_on_one_line(monkeypatch, capsys, model):
    def damage(t):
        t.pop("model.norm.weight")
        t.pop("lm_head.weight")

    edit_weights(model, damage)
    expect_error(monkeypatch, capsys, model, "(and 1 more problems)")


def test_truncated_safetensors(monkeypatch, capsys, model):
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    expect_error(monkeypatch, capsys, model, "model.safetensors: tensor ", "truncated")


def test_truncated_safetensors_header(monkeypatch, capsys, model):
    (model / "model.safetensors").write_bytes(b"\x10\x00")
    expect_error(monkeypatch, capsys, model, "model.safetensors: not a safetensors file")


def test_index_points_at_missing_shard(monkeypatch, capsys, tmp_path):
    F.write_safetensors(tmp_path, F.random_weights("llama"), n_shards=2)
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    expect_error(monkeypatch, capsys, tmp_path, "model.safetensors.index.json: tensor '",
                 "'model-00002-of-00002.safetensors', which does not exist")


@pytest.mark.parametrize("changes, needle", [
    ({"hidden_size": 66}, "hidden_size 66 is not divisible by num_attention_heads 4"),
    ({"hidden_size": 60}, "head dim 15 (hidden_size / num_attention_heads) must be even"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not divisible by num_key_value_heads 3"),
])
def test_mismatched_head_counts(monkeypatch, capsys, model, changes, needle):
    edit_config(model, **changes)
    expect_error(monkeypatch, capsys, model, "config.json", needle)


def test_pytorch_bin_without_allow_pickle(monkeypatch, capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    expect_error(monkeypatch, capsys, tmp_path, "pytorch_model.bin: refusing to load",
                 "--allow-pickle", "model.safetensors", cmd="import",
                 extra=("-o", tmp_path / "o.llmc"))
    assert not (tmp_path / "o.llmc").exists()


@pytest.mark.parametrize("payload, why", [
    (b"\x80\x04\x01\x02.", "unknown pickle opcode"),
    (b"", "ends early"),
    (b"\x80\x04}q\x00(X\x01\x00\x00\x00aq", "ends early"),
    (b"\x80\x04K\x07.", "expected a dict of tensors"),
])
def test_corrupt_pdparams(monkeypatch, capsys, tmp_path, payload, why):
    (tmp_path / "config.json").write_text(json.dumps(F.paddle_config("llama")))
    (tmp_path / "model_state.pdparams").write_bytes(payload)
    expect_error(monkeypatch, capsys, tmp_path, "model_state.pdparams: corrupt", why)


def test_truncated_pdparams_tensor(monkeypatch, capsys, tmp_path):
    import pickle

    (tmp_path / "config.json").write_text(json.dumps(F.paddle_config("llama")))
    blob = pickle.dumps({"llama.embed_tokens.weight": np.zeros((256, 64), np.float32)}, protocol=4)
    (tmp_path / "model_state.pdparams").write_bytes(blob[:-1000])
    expect_error(monkeypatch, capsys, tmp_path, "model_state.pdparams: ", "truncated")


def test_missing_tensor_parallel_rank(monkeypatch, capsys, tmp_path):
    import pickle

    (tmp_path / "config.json").write_text(json.dumps(F.paddle_config("llama", tp=3)))
    for r in (0, 2):
        (tmp_path / f"model_state.tp{r:02d}.pdparams").write_bytes(pickle.dumps({}, protocol=4))
    expect_error(monkeypatch, capsys, tmp_path, "model_state.tp01.pdparams is missing")


def test_missing_model_dir_and_output_dir(monkeypatch, capsys, model, tmp_path):
    expect_error(monkeypatch, capsys, tmp_path / "nope", "nope: no such model directory")
    expect_error(monkeypatch, capsys, model, "the output directory does not exist", cmd="import",
                 extra=("-o", tmp_path / "no" / "dir.llmc"))


def test_bad_form(monkeypatch, capsys, model):
    expect_error(monkeypatch, capsys, model, "'training' is not one of 'full', 'inference'",
                 extra=("--form", "training"))


@pytest.mark.parametrize("changes, needles", [
    (dict(rope_scaling={"type": "linear", "factor": 0.5}), ("rope_scaling.factor", ">= 1")),
    (dict(rope_scaling={"type": "linear", "factor": float("inf")}),
     ("rope_scaling.factor", "finite")),
    (dict(rms_norm_eps=-1e-5), ("rms_norm_eps", ">= 0")),
    (dict(rms_norm_eps=float("nan")), ("rms_norm_eps", "finite")),
    (dict(rope_theta=0), ("rope_theta", "> 0")),
    (dict(rope_theta=float("inf")), ("rope_theta", "finite")),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": -1.0}),
     ("rope_parameters.rope_theta", "> 0")),
    (dict(num_hidden_layers=10**30), ("num_hidden_layers", "maximum 1024")),
    (dict(hidden_size=2**20, num_attention_heads=4), ("hidden_size", "maximum")),
    (dict(num_attention_heads=10**9), ("num_attention_heads", "maximum")),
    (dict(intermediate_size=10**7), ("intermediate_size", "maximum")),
    (dict(vocab_size=10**8), ("vocab_size", "maximum")),
    (dict(architectures=["LlamaForSequenceClassification"], model_type="llama"),
     ("LlamaForSequenceClassification", "unsupported architecture", "LlamaForCausalLM")),
    (dict(architectures=["LlamaForCausalLM", "LlamaForTokenClassification"]),
     ("LlamaForTokenClassification", "unsupported architecture")),
])
def test_out_of_range_config_fields(monkeypatch, capsys, model, changes, needles):
    if "rope_parameters" in changes:
        cfg = json.loads((model / "config.json").read_text())
        cfg.pop("rope_theta", None)
        (model / "config.json").write_text(json.dumps(cfg))
    edit_config(model, **changes)
    expect_error(monkeypatch, capsys, model, "config.json", *needles)


def test_weight_file_that_is_a_directory(monkeypatch, capsys, model):
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()
    expect_error(monkeypatch, capsys, model, "model.safetensors: is a directory")
