"""WeightStore: every checkpoint format maps back to the same arrays, lazily."""

from __future__ import annotations

import json
import pickle
import struct
import time
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from llmc.frontends import fixtures as F
from llmc.frontends.loader import config_param_shapes, open_checkpoint
from llmc.frontends.paddle_ckpt import merge_tp
from llmc.frontends.weights import CheckpointError, WeightStore


def write_raw_safetensors(path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
    """A safetensors file from (dtype, shape, raw bytes) triples, without any library."""
    header, off = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [off, off + len(data)]}
        off += len(data)
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, _, data in tensors.values():
            f.write(data)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return F.write_fixture(tmp_path_factory.mktemp("hf"), "llama_gqa", "hf-numpy")


@pytest.fixture(scope="module")
def paddle_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pd")
    return {fmt: F.write_fixture(base / fmt, "llama_gqa", fmt) for fmt in ("paddle", "paddle-tp2")}


def assert_same(store: WeightStore, ref: dict[str, np.ndarray]) -> None:
    assert sorted(store) == sorted(ref)
    for name, want in ref.items():
        assert store.info(name) == ("f32", want.shape)
        np.testing.assert_array_equal(store[name], want)


def test_safetensors_single_file(hf_dir):
    store = WeightStore(hf_dir)
    assert store.format == "safetensors" and store.backed
    assert_same(store, F.random_weights("llama_gqa"))
    assert store.nbytes == sum(a.nbytes for a in F.random_weights("llama_gqa").values())


def test_f32_tensor_is_a_readonly_zero_copy_view(hf_dir):
    a = WeightStore(hf_dir)["model.embed_tokens.weight"]
    assert a.dtype == np.float32 and not a.flags.writeable
    assert isinstance(a.base, np.memmap) or isinstance(a.base.base, np.memmap)


def test_sharded_safetensors(tmp_path):
    ref = F.random_weights("llama")
    F.write_safetensors(tmp_path, ref, n_shards=3)
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    store = WeightStore(tmp_path)
    assert store.format == "safetensors-sharded" and len(store.files) == 3
    assert_same(store, ref)


def test_paddleformers_layout_is_hf(tmp_path):
    d = F.write_fixture(tmp_path, "llama", "paddleformers")
    ck = open_checkpoint(d)
    assert ck.config.source_format == "paddleformers" and ck.naming.prefix == "model."
    assert_same(ck.weights, F.llama_weights("llama"))
    assert ck.problems(config_param_shapes(ck.config, ck.naming)) == []


def test_linear_layout_is_read_from_the_weights(tmp_path):
    """PaddleFormers without save_to_hf keeps HF names but Paddle's [in, out] Linear layout."""
    ref = {n: np.ascontiguousarray(a.T) if a.ndim == 2 and "embed" not in n else a
           for n, a in F.llama_weights("llama").items()}
    F.write_safetensors(tmp_path, ref)
    (tmp_path / "config.json").write_text(json.dumps(F.paddleformers_config("llama")))
    ck = open_checkpoint(tmp_path)
    assert ck.naming.prefix == "model." and ck.naming.linear_in_out
    assert ck.problems(config_param_shapes(ck.config, ck.naming)) == []
    hf = F.write_fixture(tmp_path / "hf", "llama", "hf-numpy")
    assert not open_checkpoint(hf).naming.linear_in_out


def test_bf16_and_f16_are_reported_as_stored_and_computed_in_f32(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    bf, h = x.astype(ml_dtypes.bfloat16), x.astype(np.float16)
    write_raw_safetensors(tmp_path / "w.safetensors", {
        "a": ("BF16", bf.shape, bf.tobytes()), "b": ("F16", h.shape, h.tobytes()),
        "i": ("I64", (2,), np.array([7, 8], np.int64).tobytes())})
    store = WeightStore(tmp_path / "w.safetensors")
    assert store.info("a") == ("bf16", (3, 5)) and store.info("b") == ("f16", (3, 5))
    np.testing.assert_array_equal(store["a"], bf.astype(np.float32))
    np.testing.assert_array_equal(store["b"], h.astype(np.float32))
    assert store["a"].dtype == store["b"].dtype == np.float32
    assert store["i"].dtype == np.int64 and store["i"].tolist() == [7, 8]
    assert store.raw("a").view(ml_dtypes.bfloat16).tolist() == bf.tolist()
    assert WeightStore(tmp_path / "w.safetensors", compute_dtype=None)["b"].dtype == np.float16


def test_pdparams(paddle_dirs):
    ck = open_checkpoint(paddle_dirs["paddle"])
    assert ck.weights.format == "pdparams" and ck.naming.prefix == "llama."
    assert ck.naming.linear_in_out and ck.config.source_format == "paddle"
    assert_same(ck.weights, F.paddlenlp_weights("llama_gqa"))
    assert ck.problems(config_param_shapes(ck.config, ck.naming)) == []


def test_pdparams_tensor_parallel_shards_merge(paddle_dirs):
    store = WeightStore(paddle_dirs["paddle-tp2"])
    assert store.format == "pdparams-tp2" and len(store.files) == 2
    assert_same(store, F.paddlenlp_weights("llama_gqa"))


def test_tp_merge_keeps_replicated_kv_heads(tmp_path):
    """llama_gqa has 2 kv heads: at tp=4 PaddleNLP replicates k/v instead of splitting them."""
    full = F.paddlenlp_weights("llama_gqa")
    for rank, state in enumerate(F.paddlenlp_tp_split(full, "llama_gqa", 4)):
        with open(tmp_path / f"model_state.tp{rank:02d}.pdparams", "wb") as f:
            pickle.dump(state, f, protocol=4)
    (tmp_path / "config.json").write_text(json.dumps(F.paddle_config("llama_gqa", tp=4)))
    store = WeightStore(tmp_path)
    assert store.info("llama.layers.0.self_attn.k_proj.weight").shape == (64, 16)
    assert_same(store, full)


def test_naive_two_fuse_merge():
    gate, up = np.arange(12.0).reshape(2, 6), 100 + np.arange(12.0).reshape(2, 6)
    pairs = zip(np.split(gate, 2, 1), np.split(up, 2, 1))
    ranks = [np.concatenate([g, u], axis=1) for g, u in pairs]
    merged = merge_tp("llama.layers.0.mlp.gate_up_fused_proj.weight", ranks, 1)
    np.testing.assert_array_equal(merged, np.concatenate([gate, up], axis=1))


def test_pdparams_bf16_is_paddle_uint16(tmp_path):
    import paddle

    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    paddle.save({"w": paddle.to_tensor(x).astype("bfloat16")}, str(tmp_path / "m.pdparams"))
    store = WeightStore(tmp_path / "m.pdparams")
    assert store.info("w") == ("bf16", (4, 6))
    np.testing.assert_array_equal(store["w"], x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_opening_reads_no_tensor_data(tmp_path):
    """A 64 MiB tensor: opening and info() allocate far less than the tensor."""
    big = np.zeros((4096, 4096), np.float32)
    with open(tmp_path / "model_state.pdparams", "wb") as f:
        state = {"llama.embed_tokens.weight": big, "llama.norm.weight": np.ones(8, np.float32)}
        pickle.dump(state, f, protocol=4)
    write_raw_safetensors(tmp_path / "w.safetensors", {"x": ("F32", big.shape, big.tobytes())})
    del big
    for path in (tmp_path / "model_state.pdparams", tmp_path / "w.safetensors"):
        tracemalloc.start()
        t0 = time.perf_counter()
        store = WeightStore(path)
        name = next(iter(store))
        assert store.info(name) == ("f32", (4096, 4096))
        view = store[name]
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 << 20, (path.name, peak)
        assert elapsed < 1.0 and view.shape == (4096, 4096)


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(tmp_path / "model_state.pdparams", "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=4)
    with pytest.raises(CheckpointError, match=r"model_state\.pdparams: .*refusing global"):
        WeightStore(tmp_path / "model_state.pdparams")
    assert not (tmp_path / "pwned").exists()


def test_pytorch_bin_needs_opt_in(tmp_path):
    torch = pytest.importorskip("torch")
    ref = F.random_weights("llama")
    torch.save({k: torch.from_numpy(v) for k, v in ref.items()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle.*safetensors"):
        WeightStore(tmp_path)
    store = WeightStore(tmp_path, allow_pickle=True)
    assert store.format == "pytorch-bin"
    assert_same(store, ref)


def test_mapping_protocol_and_config_only(hf_dir, tmp_path):
    store = WeightStore(hf_dir)
    assert "lm_head.weight" in store and "nope" not in store
    assert len(store) == len(list(store)) == 30
    with pytest.raises(KeyError):
        store["nope"]
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    empty = WeightStore(tmp_path)
    assert not empty.backed and len(empty) == 0 and empty.format == "none"


@pytest.mark.parametrize("st, ir, mdt", [("F8_E4M3", "f8e4m3", ml_dtypes.float8_e4m3fn),
                                         ("F8_E5M2", "f8e5m2", ml_dtypes.float8_e5m2)])
def test_fp8_safetensors_are_decoded_not_read_as_bytes(tmp_path, st, ir, mdt):
    want = np.array([[0.0, 0.5, -1.75, 2.0], [-0.015625, 3.5, 224.0, -64.0]], np.float32)
    bits = want.astype(mdt)
    assert bits.astype(np.float32).tolist() == want.tolist()  # exactly representable
    write_raw_safetensors(tmp_path / "m.safetensors", {"w": (st, (2, 4), bits.tobytes())})
    store = WeightStore(tmp_path / "m.safetensors")
    assert store.info("w") == (ir, (2, 4)) and store.nbytes == 8
    got = store["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert store.raw("w").dtype == np.dtype(mdt)
    f16 = WeightStore(tmp_path / "m.safetensors", compute_dtype="float16")["w"]
    assert f16.dtype == np.float16 and f16.tolist() == want.tolist()


def test_tp_merge_replicates_embedding_and_lm_head_when_vocab_does_not_divide(tmp_path):
    """PaddleNLP splits embed_tokens / lm_head only when vocab % tp == 0; else every rank
    holds the full tensor and the merge must not concatenate them."""
    full = F.paddlenlp_weights("llama_gqa")
    vocab, rng = 255, np.random.default_rng(3)
    embed = rng.standard_normal((vocab, 64)).astype(np.float32)
    head = rng.standard_normal((64, vocab)).astype(np.float32)
    rest = {k: v for k, v in full.items() if k not in ("llama.embed_tokens.weight",
                                                       "lm_head.weight")}
    for rank, state in enumerate(F.paddlenlp_tp_split(rest, "llama_gqa", 2)):
        state.update({"llama.embed_tokens.weight": embed, "lm_head.weight": head})
        with open(tmp_path / f"model_state.tp{rank:02d}.pdparams", "wb") as f:
            pickle.dump(state, f, protocol=4)
    cfg = dict(F.paddle_config("llama_gqa", tp=2), vocab_size=vocab)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    store = WeightStore(tmp_path)
    assert store.info("llama.embed_tokens.weight").shape == (vocab, 64)
    assert store.info("lm_head.weight").shape == (64, vocab)
    assert_same(store, {**rest, "llama.embed_tokens.weight": embed, "lm_head.weight": head})
    ck = open_checkpoint(tmp_path)
    assert ck.problems(config_param_shapes(ck.config, ck.naming)) == []


@pytest.mark.parametrize("name", ["model.safetensors", "model_state.pdparams",
                                  "model.safetensors.index.json"])
def test_weight_path_that_is_a_directory_is_an_error(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama")))
    (tmp_path / name).mkdir()
    with pytest.raises(CheckpointError, match=f"{name}: is a directory"):
        WeightStore(tmp_path)


def test_tp_shard_or_index_shard_that_is_a_directory_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(F.paddle_config("llama", tp=2)))
    (tmp_path / "model_state.tp00.pdparams").write_bytes(pickle.dumps({}, protocol=4))
    (tmp_path / "model_state.tp01.pdparams").mkdir()
    with pytest.raises(CheckpointError, match="model_state.tp01.pdparams: is a directory"):
        WeightStore(tmp_path)
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    (d / "model-00001-of-00001.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="model-00001-of-00001.safetensors: is a directory"):
        WeightStore(d)
