"""Tests of the tiny checkpoint fixtures (frontends/fixtures.py) and the torch references."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

_REPO = Path(__file__).resolve().parents[1]
for _p in (str(_REPO), str(_REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import reference_models as rm  # noqa: E402

from frontends import fixtures as fx  # noqa: E402

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

IDS = np.array([[1, 5, 9, 33, 100, 7, 250, 3, 17, 42, 8, 19, 64, 128, 200, 2]])
SENTENCE = "Hello world, 大模型编译器把计算图编译成高效的内核。"
MAX_WRITE_SECONDS = 5.0
MAX_FIXTURE_BYTES = 10 * 2**20


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="session")
def written(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, float]]:
    """Every (arch, format) fixture written once, with its write time."""
    root = tmp_path_factory.mktemp("fixtures")
    fx.write_fixture(
        root / "warmup", "llama", "hf"
    )  # import transformers/paddle outside the timings
    fx.write_fixture(root / "warmup-paddle", "llama", "paddle")
    out = {}
    for arch in fx.ARCHES:
        for fmt in fx.FORMATS:
            start = time.perf_counter()
            path = fx.write_fixture(root / arch / fmt, arch, fmt)
            out[arch, fmt] = (path, time.perf_counter() - start)
    return out


def _dir(written, arch: str, fmt: str) -> Path:
    return written[arch, fmt][0]


# --------------------------------------------------------------------------- configs


def test_tiny_configs_use_real_formats():
    for arch in fx.ARCHES:
        cfg = fx.tiny_config(arch)
        assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
        assert (
            cfg["tie_word_embeddings"] is False
            and cfg["bos_token_id"] == 1
            and cfg["eos_token_id"] == 2
        )
    for arch in fx.LLAMA_ARCHES:
        assert fx.tiny_config(arch)["architectures"] == ["LlamaForCausalLM"]
        assert fx.tiny_config(arch)["model_type"] == "llama"
    gqa = fx.tiny_config("llama_gqa")
    assert gqa["num_key_value_heads"] < gqa["num_attention_heads"]
    assert fx.tiny_config("llama_rope_scaling")["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert fx.tiny_config("chinese_llama2")["vocab_size"] == 55296
    b7, b13 = fx.tiny_config("baichuan2_7b"), fx.tiny_config("baichuan2_13b")
    for cfg in (b7, b13):
        assert cfg["architectures"] == ["BaichuanForCausalLM"] and cfg["model_type"] == "baichuan"
        assert "num_key_value_heads" not in cfg and "auto_map" in cfg and "model_max_length" in cfg
    assert "max_position_embeddings" in b7 and "max_position_embeddings" not in b13
    assert not math.log2(b13["num_attention_heads"]).is_integer()


def test_alibi_detection():
    assert [a for a in fx.ARCHES if fx.uses_alibi(fx.tiny_config(a))] == ["baichuan2_13b"]
    assert [a for a in fx.ARCHES if fx.uses_alibi(fx.paddle_config(a))] == ["baichuan2_13b"]
    assert fx.paddle_config("baichuan2_13b")["alibi"] is True
    assert fx.paddleformers_config("baichuan2_13b")["alibi"] is True


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("arch", fx.ARCHES)
def test_every_format_writes_fast_and_small(written, arch):
    for fmt in fx.FORMATS:
        path, seconds = written[arch, fmt]
        size = sum(f.stat().st_size for f in path.iterdir())
        assert seconds < MAX_WRITE_SECONDS, (arch, fmt, seconds)
        assert size < MAX_FIXTURE_BYTES, (arch, fmt, size)
        assert (
            json.loads((path / "config.json").read_text())["vocab_size"]
            == fx.tiny_config(arch)["vocab_size"]
        )


def test_writers_are_deterministic(tmp_path):
    for arch, fmt in (
        ("llama", "hf-numpy"),
        ("baichuan2_13b", "hf-numpy"),
        ("llama", "paddleformers"),
    ):
        a = fx.write_fixture(tmp_path / "a" / arch / fmt, arch, fmt)
        b = fx.write_fixture(tmp_path / "b" / arch / fmt, arch, fmt)
        for f in sorted(a.iterdir()):
            assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    w0, w1 = fx.random_weights("llama", 0), fx.random_weights("llama", 1)
    assert not np.array_equal(w0["lm_head.weight"], w1["lm_head.weight"])


def test_cli(tmp_path):
    fx._main([str(tmp_path / "cli"), "--arch", "llama_gqa", "--fmt", "paddle-tp2", "--seed", "3"])
    assert (tmp_path / "cli" / "model_state.tp01.pdparams").exists()


# --------------------------------------------------------------------------- HF checkpoints


@pytest.mark.parametrize("arch", ["llama", "llama_gqa", "llama_rope_scaling", "chinese_llama2"])
def test_hf_llama_fixtures_load_in_transformers(written, arch):
    ref = rm.hf_logits(_dir(written, arch, "hf"), IDS)
    assert (
        ref.shape == (1, IDS.shape[1], fx.tiny_config(arch)["vocab_size"])
        and np.isfinite(ref).all()
    )
    assert ref.std() > 0.1
    for fmt in ("hf-numpy", "hf-sharded", "paddleformers"):
        np.testing.assert_allclose(
            rm.hf_logits(_dir(written, arch, fmt), IDS), ref, rtol=0, atol=1e-5
        )
    assert _rel_err(rm.reference_logits(_dir(written, arch, "hf"), IDS), ref) <= 1e-5


def test_hf_checkpoint_holds_random_weights(written):
    for arch in ("llama", "baichuan2_13b"):
        weights = fx.read_safetensors_dir(_dir(written, arch, "hf"))
        expected = fx.random_weights(arch)
        assert weights.keys() == expected.keys()
        for name, w in expected.items():
            np.testing.assert_array_equal(weights[name], w, err_msg=name)


def test_rope_scaling_is_applied(written):
    scaled = rm.hf_logits(_dir(written, "llama_rope_scaling", "hf"), IDS)
    model = rm.ReferenceDecoder.from_dir(_dir(written, "llama_rope_scaling", "hf-numpy"))
    unscaled = model.with_spec(rope_linear_factor=1.0)
    assert _rel_err(unscaled(torch.as_tensor(IDS)).numpy(), scaled) > 1e-2


@pytest.mark.parametrize("arch", fx.ARCHES)
def test_sharded_index_is_complete(written, arch):
    path = _dir(written, arch, "hf-sharded")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) >= 3
    from safetensors import safe_open

    stored = {}
    for fname in files:
        with safe_open(str(path / fname), "np") as f:
            stored.update({k: fname for k in f.keys()})
    assert stored == index["weight_map"]
    assert set(stored) == set(fx.hf_param_shapes(arch))
    assert index["metadata"]["total_size"] == sum(
        w.nbytes for w in fx.random_weights(arch).values()
    )


# --------------------------------------------------------------------------- Paddle checkpoints


def _expected_paddlenlp(arch: str) -> dict[str, np.ndarray]:
    """PaddleNLP state dict built directly from random_weights (independent of the writer)."""
    weights = fx.random_weights(arch)
    h = fx.tiny_config(arch)["hidden_size"]
    out = {}
    for name, w in weights.items():
        pname = name.replace("model.", "llama.", 1)
        if name.endswith("W_pack.weight"):
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[pname.replace("W_pack", proj)] = w[i * h : (i + 1) * h].T
        elif name == "lm_head.weight":
            out[pname] = (
                (w / np.linalg.norm(w, axis=1, keepdims=True)).T
                if arch in fx.BAICHUAN_ARCHES
                else w.T
            )
        elif w.ndim == 2 and "embed_tokens" not in name:
            out[pname] = w.T
        else:
            out[pname] = w
    return out


@pytest.mark.parametrize("arch", fx.ARCHES)
def test_pdparams_match_random_weights(written, arch):
    state = paddle.load(
        str(_dir(written, arch, "paddle") / "model_state.pdparams"), return_numpy=True
    )
    state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    expected = _expected_paddlenlp(arch)
    assert state.keys() == expected.keys()
    for name, w in expected.items():
        np.testing.assert_allclose(state[name], w, rtol=1e-6, atol=1e-7, err_msg=name)
    h, vocab = fx.tiny_config(arch)["hidden_size"], fx.tiny_config(arch)["vocab_size"]
    assert state["lm_head.weight"].shape == (h, vocab)


_TP_AXES = {
    "q_proj": 1,
    "k_proj": 1,
    "v_proj": 1,
    "gate_proj": 1,
    "up_proj": 1,
    "o_proj": 0,
    "down_proj": 0,
    "embed_tokens": 0,
    "lm_head": 1,
}


@pytest.mark.parametrize("arch", fx.ARCHES)
def test_tp_shards_concatenate_to_full(written, arch):
    path = _dir(written, arch, "paddle-tp2")
    shards = [
        paddle.load(str(path / f"model_state.tp0{r}.pdparams"), return_numpy=True) for r in range(2)
    ]
    full = fx.paddlenlp_weights(arch)
    assert json.loads((path / "config.json").read_text())["tensor_parallel_degree"] == 2
    for name, w in full.items():
        kind = next((k for k in _TP_AXES if k in name), None)
        if kind is None:
            for shard in shards:
                np.testing.assert_array_equal(shard[name], w)
            continue
        axis = _TP_AXES[kind]
        assert shards[0][name].shape[axis] * 2 == w.shape[axis], name
        np.testing.assert_array_equal(np.concatenate([s[name] for s in shards], axis=axis), w)


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_fused_qkv_layout(written, arch):
    cfg = fx.tiny_config(arch)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    hd, group = cfg["hidden_size"] // heads, heads // kv_heads
    fused = paddle.load(
        str(_dir(written, arch, "paddle-fused") / "model_state.pdparams"), return_numpy=True
    )
    plain = fx.paddlenlp_weights(arch)
    qkv = fused["llama.layers.0.self_attn.qkv_proj.weight"]
    q, k, v = (plain[f"llama.layers.0.self_attn.{n}_proj.weight"] for n in "qkv")
    assert qkv.shape == (cfg["hidden_size"], (heads + 2 * kv_heads) * hd)
    np.testing.assert_array_equal(qkv[:, : group * hd], q[:, : group * hd])
    np.testing.assert_array_equal(qkv[:, group * hd : (group + 1) * hd], k[:, :hd])
    np.testing.assert_array_equal(qkv[:, (group + 1) * hd : (group + 2) * hd], v[:, :hd])
    assert json.loads((_dir(written, arch, "paddle-fused") / "config.json").read_text())[
        "fuse_attention_qkv"
    ]


@pytest.mark.parametrize("arch", fx.ARCHES)
def test_paddle_and_paddleformers_logits_equal_hf(written, arch):
    ref = rm.hf_logits(_dir(written, arch, "hf"), IDS, arch=arch)
    for fmt in ("paddle", "paddle-tp2", "paddle-fused", "paddleformers"):
        ours = rm.reference_logits(_dir(written, arch, fmt), IDS, arch=arch)
        assert _rel_err(ours, ref) <= 1e-5, fmt


# --------------------------------------------------------------------------- Baichuan references


def test_baichuan7b_reference_equals_transformers_llama(written, tmp_path):
    path = _dir(written, "baichuan2_7b", "hf")
    converted = rm.baichuan7b_as_llama(path, tmp_path / "as_llama")
    ours = rm.baichuan_logits(path, IDS, arch="baichuan2_7b")
    theirs = rm.hf_logits(converted, IDS)
    assert _rel_err(ours, theirs) <= 1e-5


def test_baichuan13b_alibi_and_normhead_matter(written):
    model = rm.ReferenceDecoder.from_dir(_dir(written, "baichuan2_13b", "hf"), "baichuan2_13b")
    ids = torch.as_tensor(IDS)
    logits = model(ids).numpy()
    for change in ({"alibi": False}, {"norm_head": False}):
        assert _rel_err(model.with_spec(**change)(ids).numpy(), logits) > 1e-2, change


@pytest.mark.parametrize("heads", [40, 6, 8, 12, 32])
def test_baichuan_alibi_slopes_equal_bloom(heads):
    seq = 7
    bloom = rm.bloom_alibi_bias(heads, seq)
    slopes = np.array(rm.baichuan_alibi_slopes(heads), dtype=np.float32)
    np.testing.assert_allclose(bloom[:, 1], slopes, rtol=1e-6)
    np.testing.assert_allclose(
        bloom, slopes[:, None] * np.arange(seq, dtype=np.float32), rtol=1e-6, atol=1e-7
    )
    if heads == 40:
        naive = 2.0 ** (-8.0 / heads * np.arange(1, heads + 1))
        assert not np.allclose(slopes, naive)


def test_generate_matches_reference_greedy(written):
    path = _dir(written, "llama_gqa", "hf")
    prompt = IDS[:, :5]
    ours = rm.greedy_generate(rm.ReferenceDecoder.from_dir(path), torch.as_tensor(prompt), 12, None)
    np.testing.assert_array_equal(rm.hf_generate(path, prompt, 12, stop_at_eos=False), ours)
    baichuan = rm.hf_generate(_dir(written, "baichuan2_13b", "hf"), prompt, 6, arch="baichuan2_13b")
    assert baichuan.shape[1] <= prompt.shape[1] + 6 and (baichuan[:, :5] == prompt).all()


# --------------------------------------------------------------------------- tokenizers


def _check_round_trip(encode, decode, vocab_size: int, actual_size: int) -> None:
    ids = encode(SENTENCE)
    assert actual_size == vocab_size and max(ids) < vocab_size
    assert decode(ids) == SENTENCE


@pytest.mark.parametrize("arch", fx.ARCHES)
def test_tokenizers_round_trip(written, arch):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    vocab = fx.tiny_config(arch)["vocab_size"]
    for fmt in ("hf", "paddle", "paddleformers"):
        path = _dir(written, arch, fmt)
        if (path / "tokenizer.json").exists():
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            assert tok.encode(SENTENCE).ids[0] == 1
            _check_round_trip(
                lambda s: tok.encode(s).ids, lambda i: tok.decode(i), vocab, tok.get_vocab_size()
            )
        else:
            model = path / ("sentencepiece.bpe.model" if fmt == "paddle" else "tokenizer.model")
            sp = spm.SentencePieceProcessor(model_file=str(model))
            assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
            _check_round_trip(sp.encode, sp.decode, vocab, sp.vocab_size())


def test_transformers_tokenizer_and_chat_template(written):
    from transformers import AutoTokenizer

    for arch in ("llama", "chinese_llama2"):
        tok = AutoTokenizer.from_pretrained(str(_dir(written, arch, "hf")))
        ids = tok(SENTENCE)["input_ids"]
        assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2
        assert tok.decode(ids, skip_special_tokens=True) == SENTENCE
        text = tok.apply_chat_template([{"role": "user", "content": "Hello world"}], tokenize=False)
        assert text == "<s>[INST] Hello world [/INST]"
