"""Every ONNX lowering against the op's reference kernel, one op per tiny graph, run by
ONNX Runtime; and the error for an op without a lowering."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from llmc.compiler.builder import Builder
from llmc.compiler.ir import DType
from llmc.runtime.onnx import LOWERINGS, LoweringError, lower_graph
from llmc.runtime.reference import run
from op_cases import Case, f32, i64

I64_MAX = 2**63 - 1
QKV = dict(q=f32(2, 3, 4, 8), k=f32(2, 3, 2, 8), v=f32(2, 3, 2, 8))
CACHE = (f32(2, 2, 10, 8), f32(2, 2, 10, 8), np.array([4, 0], np.int64))
CASES = [
    *[Case(k, f32(2, 3, 4), f32(4)) for k in ("add", "mul", "sub", "maximum", "minimum")],
    Case("div", f32(2, 3, 4), f32(4, positive=True)),
    Case("less", i64(2, 3), i64(3)), Case("equal", i64(2, 3), i64(2, 3, high=2)),
    Case("where", f32(2, 3) > 0, f32(2, 3), f32(3)),
    *[Case(k, f32(2, 5)) for k in ("neg", "exp", "tanh", "sin", "cos", "sigmoid", "silu")],
    Case("sqrt", f32(2, 5, positive=True)), Case("rsqrt", f32(2, 5, positive=True)),
    Case("pow", f32(2, 5, positive=True), exponent=1.5),
    Case("gelu", f32(2, 5)), Case("gelu", f32(2, 5), approximate="tanh"),
    Case("swiglu", f32(2, 3, 8)), Case("swiglu", f32(2, 3, 4), f32(2, 3, 4)),
    Case("reduce_sum", f32(2, 3, 4), axes=[-1], keepdims=True), Case("reduce_mean", f32(2, 3)),
    Case("reduce_max", f32(2, 3, 4), axes=[0, 2]),
    Case("argmax", f32(2, 7)), Case("cumsum", i64(2, 5), axis=1),
    Case("cumsum", f32(2, 5), axis=1, exclusive=True),
    Case("softmax", f32(2, 3, 6)), Case("matmul", f32(2, 3, 4), f32(2, 5, 4), transpose_b=True),
    Case("matmul", f32(4, 3), f32(4, 5), transpose_a=True),
    Case("linear", f32(2, 3, 4), f32(5, 4), params=[1]),
    Case("linear", f32(2, 3, 4), f32(5, 4)),
    Case("linear", f32(2, 4), f32(4, 5), f32(5), params=[1, 2], transpose_w=False),
    Case("l2_normalize", f32(3, 4), epsilon=1e-12), Case("layer_norm", f32(2, 4), f32(4), f32(4)),
    Case("reshape", f32(2, 3, 4), shape=[0, -1]), Case("transpose", f32(2, 3, 4), perm=[2, 0, 1]),
    Case("concat", f32(2, 3), f32(2, 1), axis=1), Case("split", f32(2, 6), axis=-1, sizes=[2, 4]),
    Case("slice", f32(4, 6), axes=[1], starts=[1], ends=[6], steps=[2]),
    Case("slice", f32(2, 5, 3), axes=[1], starts=[-1], ends=[I64_MAX]),
    Case("gather", f32(3, 5), i64(2, 2, high=5), axis=1),
    Case("embedding", i64(2, 3, high=7), f32(7, 4), params=[1]),
    Case("cast", i64(2, 3), dtype="f32"), Case("unsqueeze", f32(2, 3), axes=[0, 3]),
    Case("dim_size", f32(2, 3, 4), axis=1), Case("seq_index", f32(2, 5), axis=-1),
    Case("rms_norm", f32(2, 3, 8), f32(8), epsilon=1e-5),
    Case("add_rms_norm", f32(2, 3, 8), f32(2, 3, 8), f32(8), epsilon=1e-5),
    Case("add_rms_norm", f32(1, 2, 3, 8), f32(1, 2, 3, 8), f32(8)),
    Case("lm_head", f32(2, 8), f32(8), f32(11, 8), params=[1, 2]),
    Case("rope", f32(2, 5, 3, 8), i64(2, 5, high=40), theta=10000.0),
    Case("rope", f32(2, 5, 3, 8), i64(5, high=40), theta=500.0, scaling_factor=4.0),
    Case("rope", f32(1, 4, 2, 8), i64(1, 4, high=40), style="interleaved"),
    Case("alibi_bias", i64(2, 6, high=20), num_heads=6), Case("alibi_bias", i64(9), num_heads=5),
    Case("cached_attention", QKV["q"], QKV["k"], QKV["v"], *CACHE),
    Case("cached_attention", QKV["q"], QKV["k"], QKV["v"], *CACHE, f32(4, 1, 10), scale=0.3),
    Case("attention", QKV["q"], QKV["k"], QKV["v"]),
    Case("attention", f32(2, 5, 6, 16), f32(2, 5, 6, 16), f32(2, 5, 6, 16), f32(2, 6, 1, 5),
         scale=0.2),
    Case("cached_attention", f32(1, 1, 4, 8), f32(1, 1, 4, 8), f32(1, 1, 4, 8), f32(1, 4, 6, 8),
         f32(1, 4, 6, 8), np.array([5], np.int64)),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_lowering_matches_reference(case):
    g, feeds, weights = case.graph()
    model = lower_graph(g, weights, max_positions=64)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    want = run(g, feeds, weights)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {i}"
        if case.kind == "cached_attention" and i > 0:  # presents: the rows' written slots
            lens, seq = feeds["x5"], feeds["x1"].shape[1]
            for r, n in enumerate(lens + seq):
                np.testing.assert_allclose(a[r, :, :n], b[r, :, :n], rtol=1e-6)
            continue
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"output {i}")


def test_every_lowering_is_tested():
    assert set(LOWERINGS) == {c.kind for c in CASES}


def test_static_weight_chains_fold_into_initializers():
    """concat of two [out, in] weights + transpose_w: one pre-transposed MatMul initializer."""
    b = Builder("fold")
    x = b.input("x", DType.f32, (2, 4))
    w1, w2 = b.param("w1", DType.f32, (3, 4)), b.param("w2", DType.f32, (5, 4))
    b.output(b.linear(x, b.concat(w1, w2, axis=0)))
    w = {"w1": f32(3, 4), "w2": f32(5, 4)}
    model = lower_graph(b.graph, w)
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    (init,) = model.graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(init),
                                  np.concatenate([w["w1"], w["w2"]]).T)


def test_missing_lowering_names_the_op_and_target():
    b = Builder("paddle")
    x = b.input("x", DType.f32, (2, 8))
    out, _ = b.fused_rms_norm(x, b.param("w", DType.f32, (8,)), epsilon=1e-5)
    b.output(out)
    with pytest.raises(LoweringError, match="op 'fused_rms_norm' has no ONNX lowering "
                                            r"\(target ascend910b\); compile for the cpu target"):
        lower_graph(b.graph, {"w": f32(8)}, target="ascend910b")


def test_integer_division_is_refused():
    with pytest.raises(LoweringError, match="op 'div' on integers"):
        lower_graph(Case("div", i64(2, 3), i64(3) + 1).graph()[0], {})
