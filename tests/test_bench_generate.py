"""The cheap parts of benchmarks/generate.py: HF->GGUF rope permutation, the F32 GGUF's
contents, llama.cpp agreeing with transformers on it (when the bench extra is installed),
the floor arithmetic, and the llmc row's adapter against transformers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from peers import checkpoint, floor, report  # noqa: E402
from peers.common import Case  # noqa: E402
from peers.gguf_convert import gguf_name, rope_permute  # noqa: E402


def _has(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _rope_half(x, pos, base=10000.0):
    """HF rotate_half rope on the last axis (pairs i and i+d/2)."""
    d = x.shape[-1]
    freqs = pos * base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(np.concatenate([freqs, freqs])), np.sin(np.concatenate([freqs, freqs]))
    rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


def _rope_pairs(x, pos, base=10000.0):
    """GGML's normal rope (pairs 2i and 2i+1)."""
    d = x.shape[-1]
    freqs = pos * base ** (-np.arange(0, d, 2) / d)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * np.cos(freqs) - b * np.sin(freqs)
    out[..., 1::2] = a * np.sin(freqs) + b * np.cos(freqs)
    return out


def test_rope_permutation_makes_pair_rope_equal_half_rope():
    rng = np.random.default_rng(0)
    heads, head_dim, hidden = 3, 8, 12
    w_q, w_k, x = (rng.standard_normal((heads * head_dim, hidden)),
                   rng.standard_normal((heads * head_dim, hidden)), rng.standard_normal(hidden))

    def score(wq, wk, rope, pq, pk):
        q = rope((wq @ x).reshape(heads, head_dim), pq)
        k = rope((wk @ x).reshape(heads, head_dim), pk)
        return (q * k).sum(-1)

    hf = score(w_q, w_k, _rope_half, 7.0, 3.0)
    ggml = score(rope_permute(w_q, heads), rope_permute(w_k, heads), _rope_pairs, 7.0, 3.0)
    np.testing.assert_allclose(ggml, hf, rtol=1e-10)
    unpermuted = score(w_q, w_k, _rope_pairs, 7.0, 3.0)
    assert not np.allclose(unpermuted, hf)


def test_gguf_names_cover_every_hf_tensor():
    shapes = checkpoint.tensor_shapes(checkpoint.hf_config("tiny"))
    names = {gguf_name(n) for n in shapes}
    assert len(names) == len(shapes)
    assert {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names


def test_decode_bytes_of_the_134m_config():
    # 12 layers of attention + MLP plus the untied lm_head, fp32: the 438 MB
    cfg = checkpoint.hf_config("llama-134m")
    assert round(checkpoint.decode_weight_bytes(cfg) / 1e6) == 438


def test_floor_rates_follow_bandwidth_and_flops():
    cfg = checkpoint.hf_config("llama-134m")
    measured = {"gemv_gb_s": 10.0, "sgemm_gflop_s": 100.0}
    one = floor.floor_rates(cfg, Case(128, 64, 1), measured)
    assert one["decode_tok_s"] == pytest.approx(10e9 / checkpoint.decode_weight_bytes(cfg))
    eight = floor.floor_rates(cfg, Case(128, 64, 8), measured)
    assert eight["decode_tok_s"] <= 8 * one["decode_tok_s"]
    long = floor.floor_rates(cfg, Case(1024, 64, 1), measured)
    assert long["ttft_s"] > 8 * one["ttft_s"]  # attention grows quadratically


def test_metrics_and_agreement():
    entry = {"case": {"prompt_len": 100, "new_tokens": 11, "batch": 2}, "ttft_s": 0.5,
             "decode_s": 2.0, "peak_rss_mb": 1.0}
    m = report.metrics(entry)
    assert m["decode_tok_s"] == pytest.approx(10.0) and m["prefill_tok_s"] == pytest.approx(400)
    assert report.leading_agreement([[1, 2, 3, 9], [5, 6]], [[1, 2, 4, 9], [5, 6]]) == "4/6"


def test_llmc_peer_generates_what_transformers_generates(tmp_path):
    """The llmc row's adapter (compile + export through the CLI, OrtCausalLM, greedy) on the
    tiny benchmark checkpoint: a batch of 2 equal-length prompts, 8 tokens each, = HF."""
    import torch
    import transformers

    from peers import llmc_ort

    hf_dir = checkpoint.write_checkpoint("tiny", tmp_path)
    generate = llmc_ort.load(hf_dir, 32, 2)
    prompts = [[5, 9, 17, 33], [40, 2 + 1, 7, 11]]
    timing = generate(prompts, 8)
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        want = model.generate(torch.tensor(prompts), max_new_tokens=8, min_new_tokens=8,
                              do_sample=False)[:, 4:].tolist()
    assert timing.tokens == want and timing.ttft_s > 0 and timing.decode_s > 0


@pytest.mark.skipif(not _has("gguf"), reason="gguf not installed (bench extra)")
def test_gguf_file_holds_f32_llama_weights(tmp_path):
    import gguf

    from peers.gguf_convert import convert

    hf_dir = checkpoint.write_checkpoint("tiny", tmp_path)
    reader = gguf.GGUFReader(str(convert(hf_dir, tmp_path / "tiny.gguf")))
    tensors = {t.name: t for t in reader.tensors}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    cfg = checkpoint.hf_config("tiny")
    assert len(tensors) == len(checkpoint.tensor_shapes(cfg))
    field = reader.fields["llama.attention.head_count_kv"]
    assert int(field.parts[field.data[0]][0]) == cfg["num_key_value_heads"]


@pytest.mark.skipif(not _has("gguf", "llama_cpp", "transformers", "torch"),
                    reason="llama-cpp-python/gguf/transformers not installed (bench extra)")
def test_llamacpp_on_converted_gguf_matches_transformers(tmp_path):
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from peers.check import compare_gguf_with_transformers as c;"
            "print(json.dumps(c(Path(sys.argv[2]))))")
    run = subprocess.run([sys.executable, "-c", code, str(BENCH), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["agree"], result
