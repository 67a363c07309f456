"""PaddleNLP checkpoints saved with `fuse_attention_qkv` (one `qkv_proj` per layer, output
features grouped per KV head as [the group's query heads, k, v]) give the reference logits
of the same weights unfused, in both graph forms, with the de-interleave done by graph ops,
not a weight copy.

The oracle is outside llmc: transformers' LlamaForCausalLM on the HF checkpoint of the same
weights (separate q/k/v), or for Baichuan2-13B (no transformers class) the torch
re-implementation in reference_models.py. Error measure: max|ours - ref| / max|ref| over
the logits.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import reference_models as rm

from llmc import api
from llmc.cli import main
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full, build_inference
from llmc.frontends.loader import config_param_shapes, open_checkpoint
from llmc.runtime.generate import Generator, full_logits, generate

ARCHES = ["llama", "llama_gqa", "baichuan2_13b"]
TOL = 5e-6  # the order of the README's parity figures
PROMPT_LEN, SEQ = 4, 9


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    made = {}

    def get(arch: str, fmt: str):
        if (arch, fmt) not in made:
            made[arch, fmt] = fixtures.write_fixture(tmp_path_factory.mktemp(f"{arch}-{fmt}"),
                                                     arch, fmt)
        return made[arch, fmt]

    return get


def pair(checkpoint_dir, arch: str):
    """(paddle-fused, hf) checkpoints of the same weights."""
    return (open_checkpoint(checkpoint_dir(arch, "paddle-fused")),
            open_checkpoint(checkpoint_dir(arch, "hf")))


def token_ids(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 256, size=shape)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def inference_logits(ck, ids: np.ndarray) -> np.ndarray:
    """One prefill of PROMPT_LEN tokens, then teacher-forced decode steps: [batch, steps, vocab]."""
    gen = Generator(build_inference(ck.config, ck.naming, block_size=4), ck.weights)
    s, logits = gen.prefill([list(r[:PROMPT_LEN]) for r in ids], ids.shape[1] - PROMPT_LEN)
    out = [logits] + [gen.decode(s, ids[:, p]) for p in range(PROMPT_LEN, ids.shape[1])]
    return np.stack(out, axis=1)


@pytest.mark.parametrize("arch", ARCHES)
def test_loader_detects_fused_qkv(arch, checkpoint_dir):
    ck = open_checkpoint(checkpoint_dir(arch, "paddle-fused"))
    assert ck.naming.fused_qkv and ck.naming.linear_in_out
    c = ck.config
    name = ck.naming.attn(0, "qkv_proj")
    width = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    assert ck.weights.info(name).shape == (c.hidden_size, width)
    assert not open_checkpoint(checkpoint_dir(arch, "hf")).naming.fused_qkv


@pytest.mark.parametrize("form", ["full", "inference"])
@pytest.mark.parametrize("arch", ARCHES)
def test_graph_params_are_the_checkpoint_tensors(arch, form, checkpoint_dir):
    ck = open_checkpoint(checkpoint_dir(arch, "paddle-fused"))
    g = api.build_model_graph(ck, form)
    ck.validate(api.param_shapes(g))  # no q_proj missing, no qkv_proj unexpected
    assert api.param_shapes(g) == config_param_shapes(ck.config, ck.naming)
    qkv = g.params[ck.naming.attn(0, "qkv_proj")]
    assert len(qkv.users) == 1  # one linear (full) or one reshape feeding one linear (inference)


def reference(checkpoint_dir, arch: str, ids: np.ndarray) -> np.ndarray:
    """Logits of the unfused HF checkpoint of the same weights, from transformers (or the
    torch Baichuan re-implementation)."""
    return rm.hf_logits(checkpoint_dir(arch, "hf"), ids, arch=arch)


@pytest.mark.parametrize("arch", ARCHES)
def test_full_form_matches_the_reference_on_unfused_weights(arch, checkpoint_dir):
    fused = open_checkpoint(checkpoint_dir(arch, "paddle-fused"))
    ids = token_ids(1, (2, SEQ))
    got = full_logits(build_full(fused.config, fused.naming), fused.weights, ids)
    assert rel_err(got, reference(checkpoint_dir, arch, ids)) <= TOL


@pytest.mark.parametrize("arch", ARCHES)
def test_full_form_with_core_ops_matches_the_reference_on_unfused_weights(arch, checkpoint_dir):
    fused = open_checkpoint(checkpoint_dir(arch, "paddle-fused"))
    ids = token_ids(2, (1, SEQ))
    got = full_logits(build_full(fused.config, fused.naming, decomposed=False), fused.weights, ids)
    assert rel_err(got, reference(checkpoint_dir, arch, ids)) <= TOL


@pytest.mark.parametrize("arch", ARCHES)
def test_inference_form_matches_the_reference_on_unfused_weights(arch, checkpoint_dir):
    fused = open_checkpoint(checkpoint_dir(arch, "paddle-fused"))
    ids = token_ids(3, (2, SEQ))
    want = reference(checkpoint_dir, arch, ids)[:, PROMPT_LEN - 1:]
    assert rel_err(inference_logits(fused, ids), want) <= TOL


@pytest.mark.parametrize("arch", ARCHES)
def test_greedy_generation_equals_llmc_on_the_unfused_checkpoint(arch, checkpoint_dir):
    """Same tokens from the fused and the unfused checkpoint (llmc on both: the logits
    tests above hold the external oracle)."""
    fused, hf = pair(checkpoint_dir, arch)
    prompts = [list(token_ids(4, 7)), list(token_ids(5, 3))]
    got = generate(build_inference(fused.config, fused.naming), fused.weights, prompts, 16)
    want = generate(build_inference(hf.config, hf.naming), hf.weights, prompts, 16)
    assert got == want and all(len(t) == 16 for t in got)


def test_inspect_paddle_fused(monkeypatch, capsys, checkpoint_dir, tmp_path):
    d = checkpoint_dir("llama_gqa", "paddle-fused")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["llmc", "inspect", str(d), "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    s = json.loads(out)
    assert s["weights"] == "checked" and s["source_format"] == "paddle"
    assert s["params"] == sum(a.size for a in fixtures.llama_weights("llama_gqa").values())
    assert list(tmp_path.iterdir()) == []


def test_config_only_fused_qkv_names_qkv_proj(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(fixtures.paddle_config("llama_gqa",
                                                                            fuse_qkv=True)))
    ck = open_checkpoint(tmp_path, config_only=True)
    shapes = config_param_shapes(ck.config, ck.naming)
    assert ck.naming.fused_qkv
    assert ck.config.source_format == "paddle"
    assert shapes[ck.naming.attn(1, "qkv_proj")] == (64, 96)  # [in, out]: 8 + 2*2 heads of 8
    assert not any(".q_proj." in n for n in shapes)
    s = ck.summary()
    assert s["params"] == sum(a.size for a in fixtures.llama_weights("llama_gqa").values())


def test_missing_qkv_proj_is_named(checkpoint_dir, tmp_path):
    d = checkpoint_dir("llama_gqa", "paddle-fused")
    state = fixtures.paddlenlp_weights("llama_gqa", fuse_qkv=True)
    del state["llama.layers.1.self_attn.qkv_proj.weight"]
    fixtures._save_pdparams(tmp_path / "model_state.pdparams", state)
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    ck = open_checkpoint(tmp_path)
    problems = ck.problems(api.param_shapes(api.build_model_graph(ck)))
    assert len(problems) == 1
    assert "'llama.layers.1.self_attn.qkv_proj.weight' is missing" in problems[0]
