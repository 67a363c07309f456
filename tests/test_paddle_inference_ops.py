"""The Paddle lowerings of the inference form's ops (packing, paged block attention) and
of ascend910b's fused layer against the numpy reference kernels, one op per tiny graph, with
the composites forced and with this CPU's own kernel choice; the cache is updated in place
only where nothing else reads it; the kernel choice for inference by device and CPU flags."""

import numpy as np
import pytest

pytest.importorskip("paddle")

from llmc.compiler.builder import Builder  # noqa: E402
from llmc.compiler.errors import LlmcError  # noqa: E402
from llmc.runtime.paddle import PaddleProgram, choose_kernels  # noqa: E402
from llmc.runtime.paddle.env import cpu_flags  # noqa: E402
from llmc.runtime.reference import run  # noqa: E402
from op_cases import inference_cases  # noqa: E402

CASES = inference_cases()
AVX2 = frozenset({"avx2"})
HAS_AVX512F = "avx512f" in cpu_flags()


def check(case, kernels=None):
    g, feeds, weights = case.graph()
    prog = PaddleProgram(g, weights, trainable=False, kernels=kernels)
    got = [t.numpy() for t in prog(feeds)]
    want = run(g, feeds, weights)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {i}: {a.dtype}{a.shape}"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"output {i}")
    return prog


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_composites_match_reference(case):
    check(case, choose_kernels("cpu", AVX2, inference=True))


@pytest.mark.skipif(not HAS_AVX512F, reason="Paddle's CPU fused_rms_norm needs avx512f")
@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "fused_blha_layer"], ids=repr)
def test_this_cpus_kernels_match_reference(case):
    prog = check(case)
    assert prog.kernels.report()["fused_rms_norm"].startswith("paddle.incubate fused_rms_norm")


def test_block_attention_really_attends_to_the_cache():
    """The reference and Paddle agree, and both differ from attention over the new
    tokens alone: the cached keys matter (no vacuous agreement on empty caches)."""
    case = next(c for c in CASES if c.kind == "block_multihead_attention")
    g, feeds, weights = case.graph()
    out = PaddleProgram(g, weights, trainable=False)(feeds)[0].numpy()
    feeds = dict(feeds, x1=np.zeros_like(feeds["x1"]), x2=np.zeros_like(feeds["x2"]))
    blank = PaddleProgram(g, weights, trainable=False)(feeds)[0].numpy()
    assert np.abs(out[3:] - blank[3:]).max() > 1e-2  # the decoding rows read their past


def test_cache_read_elsewhere_is_not_written_in_place():
    case = next(c for c in CASES if c.kind == "block_multihead_attention")
    g, feeds, weights = case.graph()
    b = Builder("twice")
    ins = [b.input(v.name, v.type.dtype, v.type.shape) for v in g.inputs]
    out, ck, cv = b.op("block_multihead_attention", *ins, **g.ops[0].attrs)
    b.output(out, ck, cv, ins[1])  # the old cache_k is returned too
    paddle = PaddleProgram(b.graph, {}, trainable=False)
    cache_k = paddle.paddle.to_tensor(feeds["x1"])
    got = paddle(dict(feeds, x1=cache_k))
    np.testing.assert_array_equal(got[3].numpy(), feeds["x1"])
    np.testing.assert_array_equal(cache_k.numpy(), feeds["x1"])
    assert np.abs(got[1].numpy() - feeds["x1"]).max() > 0


def test_sole_reader_writes_the_cache_tensor_in_place():
    case = next(c for c in CASES if c.kind == "block_multihead_attention")
    g, feeds, weights = case.graph()
    prog = PaddleProgram(g, weights, trainable=False)
    cache_k = prog.paddle.to_tensor(feeds["x1"])
    got = prog(dict(feeds, x1=cache_k))
    np.testing.assert_array_equal(cache_k.numpy(), got[1].numpy())
    np.testing.assert_allclose(got[1].numpy(), run(g, feeds, weights)[1], atol=1e-6)


def test_a_sequence_past_its_block_table_is_an_error():
    case = next(c for c in CASES if c.kind == "block_multihead_attention")
    g, feeds, weights = case.graph()
    feeds = dict(feeds, x4=np.array([0, 12, 2, 6], np.int32))  # sequence 1 at position 12
    with pytest.raises(LlmcError, match="sequence 1 needs 13 positions; the block table "
                                        "holds 12"):
        PaddleProgram(g, weights, trainable=False)(feeds)


def test_bad_token_num_is_an_error():
    case = next(c for c in CASES if c.kind == "get_padding_offset")
    g, feeds, weights = case.graph()
    with pytest.raises(LlmcError, match=r"get_padding_offset: token_num 6 != sum\(seq_lens\) 7"):
        PaddleProgram(g, weights, trainable=False)(dict(feeds, x2=np.asarray(6, np.int32)))


@pytest.mark.parametrize("flags, fused", [(AVX2, False), (frozenset({"avx2", "avx512f"}), True)])
def test_inference_takes_the_cpu_fused_norm_only_with_avx512f(flags, fused):
    k = choose_kernels("cpu", flags, inference=True)
    assert k.fused_rms_norm is fused
    assert ("SIGILL" in k.reasons["fused_rms_norm"]) is not fused
    assert not choose_kernels("cpu", flags).fused_rms_norm  # training: no backward kernel


def test_forced_composites_are_reported_with_why():
    layer = next(c for c in CASES if c.kind == "fused_blha_layer")
    report = check(layer, choose_kernels("cpu", AVX2, inference=True)).kernels.report()
    assert report["fused_rms_norm"].startswith("composite x * rsqrt")
    assert "SIGILL" in report["fused_rms_norm"]
    assert report["block_multihead_attention"].startswith("composite: paged gather")
    assert "GPU (f16/bf16) and XPU only" in report["block_multihead_attention"]
    assert "paddle-custom-npu" in report["fused_blha_layer"]
    assert report["fused_bias_act"].startswith("paddle.nn.functional.swiglu")


@pytest.mark.parametrize("device", ["gpu", "npu", "mlu", "iluvatar_gpu"])
def test_other_devices_say_why_block_attention_is_a_composite(device):
    why = choose_kernels(device).reasons["block_multihead_attention"]
    assert ("f16/bf16" in why) if device == "gpu" else (device in why)
