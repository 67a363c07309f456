"""Careless or hostile checkpoints that must fail cleanly: exit code 2, one line naming the
file and what is wrong, no traceback, nothing written. Also: a model directory without
weights is an error for compile, import and inspect alike."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from clitools import run_cli
from llmc.frontends import fixtures as F
from llmc.frontends.errors import CheckpointError
from llmc.frontends.loader import open_checkpoint
from llmc.frontends.weights import WeightStore


def fails(monkeypatch, capsys, *args) -> str:
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def write_with_offsets(path, tensors: dict[str, np.ndarray], offsets: dict[str, tuple]) -> None:
    """A safetensors file whose header gives each tensor the offsets in `offsets`."""
    header = {n: {"dtype": "F32", "shape": list(a.shape), "data_offsets": list(offsets[n])}
              for n, a in tensors.items()}
    end = max(e for _, e in offsets.values())
    data = bytearray(end)
    for n, a in tensors.items():
        b, e = offsets[n]
        data[b:e] = a.astype("<f4").tobytes()
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(data))


# ---------------------------------------------------------------- no weights


@pytest.mark.parametrize("cmd", ["inspect", "import", "compile"])
def test_model_dir_without_weights_is_an_error(monkeypatch, capsys, tmp_path, cmd):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    (d / "consolidated.00.pth").write_bytes(b"")
    out = tmp_path / "out"
    extra = {"inspect": (), "import": ("-o", out), "compile": ("--target", "cpu", "-o", out)}
    err = fails(monkeypatch, capsys, cmd, d, *extra[cmd])
    assert f"{d}: no weight files" in err
    for name in ("model.safetensors", "model_state.pdparams", "pytorch_model.bin"):
        assert name in err
    assert "consolidated.00.pth, which llmc does not read" in err
    assert f"--config {d / 'config.json'}" in err
    assert not out.exists() and sorted(p.name for p in d.iterdir()) == [
        "config.json", "consolidated.00.pth"]


def test_config_only_is_asked_for_explicitly(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    with pytest.raises(CheckpointError, match="no weight files"):
        open_checkpoint(tmp_path)
    for source in (tmp_path, tmp_path / "config.json"):
        ck = open_checkpoint(source, config_only=True)
        assert not ck.weights.backed and ck.config.num_layers == 2
    assert not open_checkpoint(tmp_path / "config.json").weights.backed


def test_config_only_ignores_weights_that_are_there(good):
    assert open_checkpoint(good).weights.backed
    assert not open_checkpoint(good, config_only=True).weights.backed


# ---------------------------------------------------------------- sharded index paths


def _sharded(tmp_path):
    d = tmp_path / "sharded"
    F.write_safetensors(d, F.random_weights("llama"), n_shards=2)
    (d / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    return d


def _point_shard_at(d, target: str) -> str:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(n for n, f in index["weight_map"].items() if f.startswith("model-00002"))
    index["weight_map"] = {n: (target if f.startswith("model-00002") else f)
                           for n, f in index["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return name


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_index_shard_outside_the_model_dir_is_refused(monkeypatch, capsys, tmp_path, how):
    d = _sharded(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(d / "model-00002-of-00002.safetensors", elsewhere / "x.safetensors")
    entry = {"dotdot": "../elsewhere/x.safetensors",
             "absolute": str(elsewhere / "x.safetensors"),
             "symlink": "link.safetensors", "symlinked_dir": "sub/x.safetensors"}[how]
    if how == "symlink":
        os.symlink(elsewhere / "x.safetensors", d / "link.safetensors")
    if how == "symlinked_dir":
        os.symlink(elsewhere, d / "sub")
    name = _point_shard_at(d, entry)
    out = tmp_path / "o.llmc"
    err = fails(monkeypatch, capsys, "import", d, "-o", out)
    assert f"model.safetensors.index.json: tensor '{name}' is in shard '{entry}'" in err
    assert "outside the model directory" in err and not out.exists()


def test_index_shard_in_a_subdirectory_is_fine(tmp_path):
    d = _sharded(tmp_path)
    (d / "sub").mkdir()
    shutil.move(d / "model-00002-of-00002.safetensors", d / "sub" / "x.safetensors")
    _point_shard_at(d, "sub/x.safetensors")
    assert len(WeightStore(d)) == 21


def test_hugging_face_cache_layout_is_accepted(tmp_path):
    """snapshots/REV/FILE -> ../../blobs/HASH: the hub cache's own symlinks."""
    src = _sharded(tmp_path)
    repo = tmp_path / "models--x--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        shutil.move(f, blobs / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / f.name)
    ck = open_checkpoint(snap)
    assert ck.weights.format == "safetensors-sharded" and len(ck.weights) == 21
    np.testing.assert_array_equal(ck.weights["model.norm.weight"],
                                  F.random_weights("llama")["model.norm.weight"])


# ---------------------------------------------------------------- overlapping tensors


@pytest.mark.parametrize("second", [(0, 256), (128, 384), (252, 508)])
def test_overlapping_tensor_ranges_are_refused_naming_both(monkeypatch, capsys, model, second):
    t = load_file(str(model / "model.safetensors"))
    offsets, off = {}, 0
    for n, a in t.items():
        offsets[n] = (off, off + a.nbytes)
        off += a.nbytes
    a, b = "model.norm.weight", "model.layers.0.input_layernorm.weight"  # 64 f32 = 256 bytes
    start = offsets[a][0]
    offsets[b] = (start + second[0], start + second[1])
    write_with_offsets(model / "model.safetensors", t, offsets)
    err = fails(monkeypatch, capsys, "inspect", model)
    assert "model.safetensors: tensors '" in err and "overlap" in err
    assert f"'{a}'" in err and f"'{b}'" in err


def test_adjacent_and_empty_tensors_do_not_overlap(tmp_path):
    x, e = np.arange(4, dtype=np.float32), np.zeros((0,), np.float32)
    write_with_offsets(tmp_path / "w.safetensors", {"a": x, "b": x, "empty": e},
                       {"a": (0, 16), "b": (16, 32), "empty": (8, 8)})
    store = WeightStore(tmp_path / "w.safetensors")
    assert store["b"].tolist() == x.tolist() and store["empty"].shape == (0,)


# ---------------------------------------------------------------- deeply nested JSON


def test_deeply_nested_config_json(monkeypatch, capsys, model):
    (model / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    err = fails(monkeypatch, capsys, "inspect", model)
    assert f"{model / 'config.json'}: malformed JSON: nested too deeply" in err


def test_deeply_nested_index_and_header(monkeypatch, capsys, tmp_path, model):
    d = _sharded(tmp_path)
    (d / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    err = fails(monkeypatch, capsys, "inspect", d)
    assert "model.safetensors.index.json: malformed JSON: nested too deeply" in err
    blob = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    err = fails(monkeypatch, capsys, "inspect", model)
    assert "model.safetensors: corrupt safetensors header: JSON nested too deeply" in err


def test_deeply_nested_tokenizer_config(tmp_path):
    from llmc.frontends.tokenizer import TokenizerError, load_tokenizer

    d = F.write_fixture(tmp_path / "m", "llama", "hf-numpy")
    (d / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TokenizerError, match="tokenizer_config.json: cannot read: JSON nested"):
        load_tokenizer(d)
