"""ascend910b's inference form on the Paddle runtime (PaddlePagedLM): the reference paged
LM's greedy tokens and its logits within 1e-4 for several architectures (GQA, MHA, rope
scaling, ALiBi), compiled and uncompiled, through the engine too (a kept cache continued);
`llmc generate ART --runtime paddle` on ascend910b artifacts, with the kernel report."""

import json

import numpy as np
import pytest
from cache_tools import greedy
from clitools import run_cli
from test_paged_lm import PROMPTS, ascend_graph

pytest.importorskip("paddle")

from llmc.runtime.engine import Engine, GenerationParams, KVState  # noqa: E402
from llmc.runtime.paddle import PaddlePagedLM  # noqa: E402
from llmc.runtime.paged_lm import PagedLM  # noqa: E402

ARCHES = ["llama_gqa", "llama", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b"]


def assert_same_run(want, got):
    (want_toks, want_steps), (got_toks, got_steps) = want, got
    assert got_toks == want_toks
    assert len(got_steps) == len(want_steps)
    for a, b in zip(got_steps, want_steps):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.parametrize("arch", ARCHES)
def test_ascend_artifact_graph_matches_the_reference(arch):
    g, w = ascend_graph(arch)
    assert any(op.kind == "fused_blha_layer" for op in g.ops)
    assert_same_run(greedy(PagedLM(g, w), PROMPTS, 5), greedy(PaddlePagedLM(g, w), PROMPTS, 5))


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_unfused_inference_form_matches_the_reference(arch):
    g, w = ascend_graph(arch, compiled=False)
    assert any(op.kind == "block_multihead_attention" for op in g.ops)
    lm = PaddlePagedLM(g, w)
    assert_same_run(greedy(PagedLM(g, w), PROMPTS, 5), greedy(lm, PROMPTS, 5))
    assert {"get_padding_offset", "rebuild_padding"} <= set(lm.kernels.report())


def test_engine_and_a_kept_cache_on_paddle():
    """The engine's greedy tokens equal the reference's, and a second turn that extends
    the first prefills only its new tokens and continues as a fresh prefill would."""
    g, w = ascend_graph("baichuan2_13b")
    params = GenerationParams(max_new_tokens=4)
    want = Engine(PagedLM(g, w)).generate(PROMPTS, params).tokens
    lm = PaddlePagedLM(g, w)
    assert Engine(lm).generate(PROMPTS, params).tokens == want
    state = KVState(capacity=32)
    first = Engine(lm).generate([PROMPTS[0]], params, state=state).tokens[0]
    longer = PROMPTS[0] + first + [5, 6]
    again = Engine(lm).generate([longer], params, state=state)
    assert again.timings.prefill_tokens == 3
    assert again.tokens[0] == Engine(PagedLM(g, w)).generate([longer], params).tokens[0]


def test_limits_come_from_the_graph():
    g, w = ascend_graph("llama")
    ours, ref = PaddlePagedLM(g, w), PagedLM(g, w)
    assert (ours.vocab_size, ours.max_positions) == (ref.vocab_size, ref.max_positions)


# ---- the CLI ------------------------------------------------------------------------------
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def ascend_arts(tmp_path_factory):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model
    from llmc.frontends.fixtures import write_fixture

    out = {}
    for arch in ("llama_gqa", "baichuan2_13b"):
        ck = write_fixture(tmp_path_factory.mktemp("ck"), arch)
        out[arch] = write_artifact(compile_model(ck, "ascend910b"),
                                   tmp_path_factory.mktemp("arts") / arch)
    return out


def generate_json(monkeypatch, capsys, art, *flags, prompt=("--prompt", PROMPT)):
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, *prompt, "-n", "8", "--json",
                             *flags)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_cli_generates_ascend_artifacts_on_paddle(monkeypatch, capsys, ascend_arts, arch):
    ours = generate_json(monkeypatch, capsys, ascend_arts[arch], "--runtime", "paddle",
                         "--device", "cpu")
    ref = generate_json(monkeypatch, capsys, ascend_arts[arch], "--runtime", "reference")
    assert (ours["target"], ours["form"], ours["runtime"]) == ("ascend910b", "inference",
                                                               "paddle")
    assert len(ours["results"][0]["new_ids"]) == 8
    assert ours["results"][0]["new_ids"] == ref["results"][0]["new_ids"]
    kernels = ours["kernels"]
    assert {"fused_blha_layer", "block_multihead_attention", "remove_padding",
            "lm_head", "fused_rms_norm", "fused_bias_act"} <= set(kernels)
    assert "paddle-custom-npu" in kernels["fused_blha_layer"]
    assert ref["kernels"] is None


def test_cli_batch_file_on_paddle(monkeypatch, capsys, ascend_arts, tmp_path):
    batch = tmp_path / "prompts.txt"
    batch.write_text("the quick brown fox\nhello\na b c d e f g\n")
    docs = [generate_json(monkeypatch, capsys, ascend_arts["llama_gqa"], "--runtime", runtime,
                          prompt=("--batch-file", batch)) for runtime in ("paddle", "reference")]
    assert len(docs[0]["results"]) == 3
    assert [r["new_ids"] for r in docs[0]["results"]] == [r["new_ids"] for r in docs[1]["results"]]


def test_cli_streams_text_on_paddle(monkeypatch, capsys, ascend_arts):
    code, out, err = run_cli(monkeypatch, capsys, "generate", ascend_arts["baichuan2_13b"],
                             "--prompt", PROMPT, "-n", "4", "--runtime", "paddle")
    assert code == 0, err
    assert out.strip() and err.startswith("paddle: prefill ")


def test_forward_only_program_runs_the_weight_concats_once():
    """ascend910b's qkv / gate_up weight concats read weights only: a forward-only program
    runs them at load and lets the weights they consumed go; outputs are unchanged."""
    from llmc.runtime.generate import Generator
    from llmc.runtime.paddle import PaddleProgram, choose_kernels
    from llmc.runtime.reference import run

    g, w = ascend_graph("llama_gqa")
    ours = PaddleProgram(g, w, trainable=False)
    concats = [op for op in g.ops if op.kind == "concat"]
    assert concats and all(op.outputs[0] in ours.constants for op in concats)
    assert not any("q_proj" in name or "gate_proj" in name for name in ours.params)
    assert len(PaddleProgram(g, w, kernels=choose_kernels("cpu", frozenset())).params) == len(w)
    s = Generator(g, w).new_session(2, 8)
    feeds = {"input_ids": np.asarray([[3, 4, 5], [6, 7, 0]]),
             "seq_lens_this_time": np.asarray([3, 2], np.int32),
             "seq_lens_encoder": np.asarray([3, 2], np.int32),
             "seq_lens_decoder": np.zeros(2, np.int32), "block_tables": s.tables, **s.caches}
    for _ in range(2):  # (the folded values survive a call)
        np.testing.assert_allclose(ours(feeds)[0].numpy(), run(g, feeds, w)[0], atol=1e-5)
