"""Every Paddle lowering against the op's reference kernel, one op per tiny graph run by
PaddleProgram on the CPU; the kernel choice by device and CPU features; the errors for an
op without a lowering and a device this Paddle lacks."""

import numpy as np
import pytest

pytest.importorskip("paddle")

from llmc.compiler.builder import Builder  # noqa: E402
from llmc.compiler.errors import LlmcError  # noqa: E402
from llmc.compiler.ir import DType  # noqa: E402
from llmc.runtime.paddle import (  # noqa: E402
    LOWERINGS, LoweringError, PaddleProgram, choose_kernels, place_for)
from llmc.runtime.reference import run  # noqa: E402
from op_cases import Case, f32, i64, inference_cases  # noqa: E402

I64_MAX = 2**63 - 1
QKV = dict(q=f32(2, 3, 4, 8), k=f32(2, 3, 2, 8), v=f32(2, 3, 2, 8))
CACHE = (f32(2, 2, 10, 8), f32(2, 2, 10, 8), np.array([4, 0], np.int64))
CASES = [
    *[Case(k, f32(2, 3, 4), f32(4)) for k in ("add", "mul", "sub", "maximum", "minimum")],
    Case("div", f32(2, 3, 4), f32(4, positive=True)), Case("div", i64(2, 3), i64(3) + 1),
    Case("less", i64(2, 3), i64(3)), Case("equal", i64(2, 3), i64(2, 3, high=2)),
    Case("where", f32(2, 3) > 0, f32(2, 3), f32(3)),
    *[Case(k, f32(2, 5)) for k in ("neg", "exp", "tanh", "sin", "cos", "sigmoid", "silu")],
    Case("sqrt", f32(2, 5, positive=True)), Case("rsqrt", f32(2, 5, positive=True)),
    Case("pow", f32(2, 5, positive=True), exponent=1.5),
    Case("gelu", f32(2, 5)), Case("gelu", f32(2, 5), approximate="tanh"),
    Case("swiglu", f32(2, 3, 8)), Case("swiglu", f32(2, 3, 4), f32(2, 3, 4)),
    Case("reduce_sum", f32(2, 3, 4), axes=[-1], keepdims=True), Case("reduce_mean", f32(2, 3)),
    Case("reduce_sum", i64(2, 3).astype(np.int32)),
    Case("reduce_max", f32(2, 3, 4), axes=[0, 2]),
    Case("argmax", f32(2, 7)), Case("cumsum", i64(2, 5), axis=1),
    Case("cumsum", f32(2, 5), axis=1, exclusive=True),
    Case("softmax", f32(2, 3, 6)), Case("matmul", f32(2, 3, 4), f32(2, 5, 4), transpose_b=True),
    Case("matmul", f32(4, 3), f32(4, 5), transpose_a=True),
    Case("linear", f32(2, 3, 4), f32(5, 4), params=[1]),
    Case("linear", f32(2, 4), f32(4, 5), f32(5), params=[1, 2], transpose_w=False),
    Case("l2_normalize", f32(3, 4), epsilon=1e-12), Case("l2_normalize", f32(3, 4), axis=0),
    Case("layer_norm", f32(2, 4), f32(4), f32(4)), Case("layer_norm", f32(2, 3, 4), f32(4)),
    Case("reshape", f32(2, 3, 4), shape=[0, -1]), Case("transpose", f32(2, 3, 4), perm=[2, 0, 1]),
    Case("concat", f32(2, 3), f32(2, 1), axis=1), Case("split", f32(2, 6), axis=-1, sizes=[2, 4]),
    Case("slice", f32(4, 6), axes=[1], starts=[1], ends=[6], steps=[2]),
    Case("slice", f32(2, 5, 3), axes=[1], starts=[-1], ends=[I64_MAX]),
    Case("gather", f32(3, 5), i64(2, 2, high=5), axis=1),
    Case("embedding", i64(2, 3, high=7), f32(7, 4), params=[1]),
    Case("cast", i64(2, 3), dtype="f32"), Case("unsqueeze", f32(2, 3), axes=[0, 3]),
    Case("unsqueeze", f32(2, 3), axes=[-1, 0]),
    Case("constant", value=[1.5, -2.0], shape=[2]), Case("arange", start=2, end=7),
    Case("dim_size", f32(2, 3, 4), axis=1), Case("seq_index", f32(2, 5), axis=-1),
    Case("rms_norm", f32(2, 3, 8), f32(8), epsilon=1e-5),
    Case("add_rms_norm", f32(2, 3, 8), f32(2, 3, 8), f32(8), epsilon=1e-5),
    Case("fused_rms_norm", f32(5, 8), f32(8), f32(5, 8)), Case("fused_rms_norm", f32(5, 8), f32(8)),
    Case("fused_bias_residual_layernorm", f32(5, 8), f32(5, 8), f32(8), f32(8), residual_alpha=0.5),
    Case("fused_bias_residual_layernorm", f32(5, 8), f32(5, 8)),
    *[Case("fused_bias_act", f32(3, 8), f32(8), act_method=a)
      for a in ("swiglu", "geglu", "gelu", "silu", "relu")],
    Case("lm_head", f32(2, 8), f32(8), f32(11, 8), params=[1, 2]),
    Case("cross_entropy", f32(2, 5, 7), np.array([[1, -100, 3, 6, 0], [2, 2, -100, -100, 5]])),
    Case("cross_entropy", f32(2, 5, 7), i64(2, 5, high=7), reduction="sum"),
    Case("cross_entropy", f32(3, 7), np.array([1, -1, 4]), ignore_index=-1, reduction="none"),
    Case("rope", f32(2, 5, 3, 8), i64(2, 5, high=40), theta=10000.0),
    Case("rope", f32(2, 5, 3, 8), i64(5, high=40), theta=500.0, scaling_factor=4.0),
    Case("rope", f32(1, 4, 2, 8), i64(1, 4, high=40), style="interleaved"),
    Case("alibi_bias", i64(2, 6, high=20), num_heads=6), Case("alibi_bias", i64(9), num_heads=5),
    Case("attention", QKV["q"], QKV["k"], QKV["v"]),
    Case("kv_cache_update", f32(2, 2, 10, 8), f32(2, 2, 3, 8), np.array([4, 7], np.int64)),
    Case("cached_attention", QKV["q"], QKV["k"], QKV["v"], *CACHE),
    Case("cached_attention", QKV["q"], QKV["k"], QKV["v"], *CACHE, f32(4, 1, 10), scale=0.3),
    Case("cached_attention", f32(1, 1, 4, 8), f32(1, 1, 4, 8), f32(1, 1, 4, 8), f32(1, 4, 6, 8),
         f32(1, 4, 6, 8), np.array([5], np.int64)),
    Case("attention", QKV["q"], QKV["k"], QKV["v"], causal=False),
    Case("attention", f32(2, 2, 4, 8), f32(2, 5, 2, 8), f32(2, 5, 2, 8)),
    Case("attention", f32(2, 5, 6, 16), f32(2, 5, 6, 16), f32(2, 5, 6, 16), f32(2, 6, 1, 5),
         scale=0.2),
    # tensor-parallel ops on a group of one rank (2 ranks: tests/test_dist_runtime.py)
    Case("rank", nranks=1), Case("all_reduce", f32(2, 3), nranks=1),
    Case("grad_all_reduce", f32(2, 3), nranks=1),
    Case("all_gather", f32(2, 3), axis=1, nranks=1),
    Case("reduce_scatter", f32(2, 4), axis=1, nranks=1),
    Case("shard", f32(6, 4), np.array(1, np.int64), axis=0, parts=2),
    Case("shard", f32(2, 12), np.array(0, np.int64), axis=1, parts=2, blocks=[8, 2, 2]),
    Case("parallel_embedding", i64(2, 3, high=8), f32(4, 5), np.array(1, np.int64)),
    Case("matmul_all_reduce", f32(2, 3, 4), f32(5, 4), params=[1], nranks=1),
    Case("all_gather_matmul", f32(2, 3, 4), f32(4, 5), params=[1], axis=1, transpose_w=False,
         nranks=1),
    Case("matmul_reduce_scatter", f32(2, 4, 4), f32(5, 4), params=[1], axis=1, nranks=1),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_lowering_matches_reference(case):
    g, feeds, weights = case.graph()
    got = [t.numpy() for t in PaddleProgram(g, weights)(feeds)]
    want = run(g, feeds, weights)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {i}: {a.dtype}{a.shape}"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"output {i}")


def test_every_lowering_is_tested():
    """(the inference form's cases run in test_paddle_inference_ops.py)"""
    assert set(LOWERINGS) == {c.kind for c in CASES + inference_cases()}


def test_missing_lowering_names_the_op(monkeypatch):
    monkeypatch.delitem(LOWERINGS, "blha_get_max_len")
    b = Builder("paged")
    x = b.input("x", DType.i32, (2,))
    b.output(*b.op("blha_get_max_len", x, x, x))
    with pytest.raises(LoweringError, match="op 'blha_get_max_len' has no Paddle lowering"):
        PaddleProgram(b.graph, {})


def test_cpu_never_gets_the_avx512_or_gpu_only_kernels():
    for flags in (frozenset({"avx2"}), frozenset({"avx2", "avx512f"})):
        k = choose_kernels("cpu", flags)
        assert not k.fused_rms_norm and not k.fused_rope and k.swiglu and k.sdpa
    assert "SIGILL" in choose_kernels("cpu", frozenset({"avx2"})).reasons["rms_norm"]
    gpu = choose_kernels("gpu:0")
    assert gpu.fused_rms_norm and gpu.fused_rope


def test_report_names_the_kernel_that_ran():
    case = Case("rms_norm", f32(2, 8), f32(8))
    g, feeds, weights = case.graph()
    prog = PaddleProgram(g, weights, kernels=choose_kernels("cpu", frozenset({"avx2"})))
    prog(feeds)
    assert prog.kernels.report()["rms_norm"].startswith("composite x * rsqrt")


@pytest.mark.parametrize("device,package", [("npu", "paddle-custom-npu"),
                                            ("mlu", "paddle-custom-mlu"),
                                            ("iluvatar_gpu", "paddle-iluvatar-gpu")])
def test_missing_device_names_its_package(device, package):
    with pytest.raises(LlmcError, match=f"device '{device}' is not available in this Paddle "
                                        f"build: install {package}"):
        place_for(device)


def test_unknown_device_is_refused():
    with pytest.raises(LlmcError, match="--device must be one of cpu, gpu, npu"):
        place_for("tpu")


def test_missing_paddle_says_how_to_install(monkeypatch):
    import sys

    from llmc.runtime.paddle import import_paddle

    monkeypatch.setitem(sys.modules, "paddle", None)  # `import paddle` raises ImportError
    with pytest.raises(LlmcError, match=r"pip install 'llmc\[paddle\]'"):
        import_paddle()


def test_cpu_environment_is_set_before_paddle_loads_unless_the_user_set_it():
    import os
    import subprocess
    import sys

    from llmc.runtime.paddle.env import cpu_environment

    assert cpu_environment("AuthenticAMD")["MKL_DEBUG_CPU_TYPE"] == "5"
    assert "MKL_DEBUG_CPU_TYPE" not in cpu_environment("GenuineIntel")
    cores = str(len(os.sched_getaffinity(0)))
    assert cpu_environment("GenuineIntel")["OMP_NUM_THREADS"] == cores
    code = ("import os, sys; from llmc.runtime.paddle import import_paddle; "
            "assert 'paddle' not in sys.modules; import_paddle(); "
            "print(os.environ['OMP_NUM_THREADS'], os.environ.get('MKL_DEBUG_CPU_TYPE'))")
    for preset, want in ((None, cores), ("1", "1")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if preset:
            env["OMP_NUM_THREADS"] = preset
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[-2] == want
        mkl = cpu_environment().get("MKL_DEBUG_CPU_TYPE", "None")
        assert out[-1] == os.environ.get("MKL_DEBUG_CPU_TYPE", mkl)
