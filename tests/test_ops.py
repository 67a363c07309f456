"""Every core op: the inferred result type matches what its reference kernel produces."""

import numpy as np
import pytest

from llmc.compiler.ir import DType, TensorType
from llmc.compiler.ops import REGISTRY, OpError, get_op
from llmc.compiler.ops.nn import alibi_slopes

F = "f32"


def T(dt, *shape):
    return TensorType(DType(dt), shape)


# op name -> list of (input types, attrs, int upper bound for integer inputs)
SAMPLES = {
    "add": [([T(F, 2, 3), T(F, 3)], {})],
    "mul": [([T(F, 2, 1, 4), T(F, 3, 1)], {})],
    "sub": [([T(F, 2, 3), T(F, 2, 3)], {})],
    "div": [([T(F, 2, 3), T(F, 1)], {}), ([T("i64", 4), T("i64", 4)], {})],
    "maximum": [([T(F, 5), T(F, 5)], {})],
    "minimum": [([T(F, 5), T(F, 5)], {})],
    "neg": [([T(F, 2, 2)], {})],
    "exp": [([T(F, 3)], {})],
    "sqrt": [([T(F, 3)], {})],
    "rsqrt": [([T(F, 3)], {})],
    "tanh": [([T(F, 3)], {})],
    "sin": [([T(F, 3)], {})],
    "cos": [([T(F, 3)], {})],
    "sigmoid": [([T(F, 3)], {})],
    "silu": [([T(F, 2, 8)], {}), ([T("bf16", 4)], {})],
    "pow": [([T(F, 4)], {"exponent": 2.0})],
    "gelu": [([T(F, 4)], {}), ([T(F, 4)], {"approximate": "tanh"})],
    "swiglu": [([T(F, 2, 8)], {}), ([T(F, 2, 4), T(F, 2, 4)], {})],
    "less": [([T(F, 3, 1), T(F, 4)], {})],
    "equal": [([T("i64", 3), T("i64", 3)], {})],
    "where": [([T("bool", 2, 3), T(F, 2, 3), T(F, 1)], {})],
    "reduce_sum": [([T(F, 2, 3, 4)], {"axes": (1,)}), ([T("i32", 5)], {})],
    "reduce_mean": [([T(F, 2, 3)], {"axes": (-1,), "keepdims": True})],
    "reduce_max": [([T(F, 2, 3)], {"axes": (0, 1)})],
    "argmax": [([T(F, 2, 7)], {}), ([T(F, 2, 7)], {"axis": 0, "keepdims": True})],
    "cumsum": [([T("i32", 4)], {}), ([T(F, 2, 3)], {"axis": 0, "exclusive": True})],
    "softmax": [([T(F, 2, 5)], {})],
    "matmul": [([T(F, 2, 3, 4), T(F, 4, 5)], {}), ([T(F, 3, 4), T(F, 5, 4)], {"transpose_b": True}),
               ([T(F, 2, 4, 3), T(F, 2, 4, 5)], {"transpose_a": True})],
    "linear": [([T(F, 2, 3, 4), T(F, 6, 4)], {}), ([T(F, 5, 4), T(F, 4, 6), T(F, 6)],
                                                   {"transpose_w": False})],
    "rms_norm": [([T(F, 2, 8), T(F, 8)], {"epsilon": 1e-5})],
    "layer_norm": [([T(F, 2, 8), T(F, 8), T(F, 8)], {})],
    "l2_normalize": [([T(F, 6, 4)], {})],
    "cross_entropy": [([T(F, 2, 3, 10), T("i64", 2, 3)], {}),
                      ([T(F, 4, 10), T("i64", 4)], {"reduction": "none"})],
    "reshape": [([T(F, 2, 3, 4)], {"shape": (0, -1)}), ([T(F, 6)], {"shape": (2, 3)})],
    "transpose": [([T(F, 2, 3, 4)], {"perm": (2, 0, 1)})],
    "concat": [([T(F, 2, 3), T(F, 2, 5)], {"axis": 1})],
    "split": [([T(F, 2, 9)], {"axis": -1, "sizes": (2, 3, 4)})],
    "slice": [([T(F, 4, 10)], {"axes": (1,), "starts": (2,), "ends": (8,), "steps": (2,)}),
              ([T(F, 4, 10)], {"axes": (0,), "starts": (-1,), "ends": (2**63 - 1,)})],
    "gather": [([T(F, 10, 3), T("i64", 2, 4)], {})],
    "embedding": [([T("i64", 2, 5), T(F, 10, 4)], {})],
    "cast": [([T(F, 3)], {"dtype": DType.f16}), ([T(F, 3)], {"dtype": DType.bf16}),
             ([T("i64", 3)], {"dtype": DType.f32})],
    "constant": [([], {"value": (1.0, 2.0), "shape": (2,)}), ([], {"value": (0.5,), "shape": (2, 2)})],
    "arange": [([], {"end": 5})],
    "dim_size": [([T(F, 3, 7)], {"axis": 1})],
    "seq_index": [([T("i64", 2, 6)], {"axis": 1}), ([T(F, 3, 4, 5)], {"axis": -3})],
    "unsqueeze": [([T(F, 3, 4)], {"axes": (0, 3)})],
    "rope": [([T(F, 2, 5, 3, 8), T("i64", 2, 5)], {}),
             ([T(F, 1, 4, 2, 6), T("i64", 4)], {"style": "interleaved", "scaling_factor": 2.0})],
    "alibi_bias": [([T("i64", 2, 6)], {"num_heads": 5})],
    "attention": [([T(F, 2, 3, 4, 8), T(F, 2, 5, 2, 8), T(F, 2, 5, 2, 8)], {}),
                  ([T(F, 1, 4, 2, 8), T(F, 1, 4, 2, 8), T(F, 1, 4, 2, 8), T(F, 1, 2, 1, 4)],
                   {"causal": False})],
}


def _random(t: TensorType, rng, high=10):
    if t.dtype.is_float:
        return rng.uniform(0.1, 2.0, size=t.shape).astype(t.dtype.np)
    if t.dtype is DType.bool:
        return rng.random(t.shape) < 0.5
    return rng.integers(0, high, size=t.shape).astype(t.dtype.np)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_inferred_type_matches_kernel(name):
    rng = np.random.default_rng(0)
    opdef = get_op(name)
    for types, attrs in SAMPLES[name]:
        attrs = opdef.normalize_attrs(attrs)
        inferred = opdef.infer_types(types, attrs)
        results = opdef.run([_random(t, rng) for t in types], attrs)
        assert len(results) == len(inferred)
        for t, r in zip(inferred, results):
            r = np.asarray(r)
            assert r.dtype == t.dtype.np, (name, t, r.dtype)
            assert tuple(r.shape) == t.shape, (name, t, r.shape)


REQUIRED_OPS = ("embedding", "matmul", "linear", "add", "mul", "sub", "div", "neg", "silu", "gelu",
                "swiglu", "rms_norm", "layer_norm", "rope", "alibi_bias", "softmax", "attention",
                "reshape", "transpose", "concat", "split", "slice", "gather", "cast", "cumsum",
                "reduce_sum", "reduce_mean", "reduce_max", "argmax", "cross_entropy")


def test_every_core_op_is_registered_and_sampled():
    assert [n for n in REQUIRED_OPS if n not in REGISTRY] == []
    assert [n for n in REQUIRED_OPS if n not in SAMPLES] == []


def test_symbolic_shapes_flow():
    lin = get_op("linear")
    (t,) = lin.infer_types([T(F, "batch", "seq", 4), T(F, 6, 4)], lin.normalize_attrs({}))
    assert t.shape == ("batch", "seq", 6)
    rs = get_op("reshape")
    (t,) = rs.infer_types([T(F, "b", "s", 8)], rs.normalize_attrs({"shape": (0, 0, 2, 4)}))
    assert t.shape == ("b", "s", 2, 4)
    (t,) = rs.infer_types([T(F, "b", "s", 2, 4)], rs.normalize_attrs({"shape": (0, -1, 8)}))
    assert t.shape == ("b", "s", 8)


@pytest.mark.parametrize("name,types,attrs,msg", [
    ("add", [T(F, 2, 3), T(F, 4)], {}, "cannot broadcast"),
    ("add", [T(F, 2), T("i64", 2)], {}, "dtypes differ"),
    ("matmul", [T(F, 2, 3), T(F, 4, 5)], {}, "contraction dim"),
    ("reshape", [T(F, 2, 3)], {"shape": (4,)}, "cannot reshape"),
    ("split", [T(F, 2, 9)], {"axis": 1, "sizes": (4, 4)}, "do not sum"),
    ("attention", [T(F, 1, 2, 3, 4), T(F, 1, 2, 2, 4), T(F, 1, 2, 2, 4)], {}, "not divisible"),
    ("rope", [T(F, 1, 2, 3, 4), T(F, 1, 2)], {}, "must be i64 or i32"),
])
def test_inference_errors_name_the_op(name, types, attrs, msg):
    od = get_op(name)
    with pytest.raises(OpError, match=msg) as e:
        od.infer_types(types, od.normalize_attrs(attrs))
    assert name in str(e.value)


def test_attr_schema_errors():
    with pytest.raises(OpError, match="unknown attribute 'axs'"):
        get_op("softmax").normalize_attrs({"axs": 1})
    with pytest.raises(OpError, match="expects int"):
        get_op("softmax").normalize_attrs({"axis": 1.5})
    with pytest.raises(OpError, match="missing required attribute 'perm'"):
        get_op("transpose").normalize_attrs({})
    with pytest.raises(OpError, match="did you mean matmul"):
        get_op("matmull")


def test_kernels_semantics_spot_checks():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    (y,) = get_op("linear").run([x, w], {"transpose_w": True})
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-6)
    (s,) = get_op("softmax").run([x], {"axis": -1})
    np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-6)
    (ce,) = get_op("cross_entropy").run([x, np.array([[0, 1, 3], [2, 2, -100]])],
                                        {"ignore_index": -100, "reduction": "mean"})
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    want = -(logp[0, 0, 0] + logp[0, 1, 1] + logp[0, 2, 3] + logp[1, 0, 2] + logp[1, 1, 2]) / 5
    assert abs(float(ce) - want) < 1e-5


def test_attention_gqa_equals_repeated_kv_and_is_causal():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 4, 4, 8)).astype(np.float32)
    k = rng.standard_normal((1, 4, 2, 8)).astype(np.float32)
    v = rng.standard_normal((1, 4, 2, 8)).astype(np.float32)
    att = get_op("attention")
    (a,) = att.run([q, k, v], att.normalize_attrs({}))
    (b,) = att.run([q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)], att.normalize_attrs({}))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # the first query sees only the first key, so its output is v[0] of its kv head
    np.testing.assert_allclose(a[0, 0, 0], v[0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(a[0, 0, 3], v[0, 0, 1], rtol=1e-6)


def test_rope_rotation_preserves_norm_and_position_zero_is_identity():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)
    for style in ("neox", "interleaved"):
        (y,) = get_op("rope").run([x, np.array([[0, 1, 2]])], get_op("rope").normalize_attrs({"style": style}))
        np.testing.assert_allclose(y[0, 0], x[0, 0], rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_alibi_slopes_power_of_two_and_not():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)], rtol=1e-6)
    s = alibi_slopes(40)
    assert len(s) == 40
    np.testing.assert_allclose(s[:32], alibi_slopes(32), rtol=1e-6)
    np.testing.assert_allclose(s[32:], alibi_slopes(64)[0::2][:8], rtol=1e-6)


def test_every_op_has_a_test_against_its_formula():
    """Each registered op is listed by a test_kernels_* module that checks it against values
    written from the op's formula (not against another in-repo kernel)."""
    import test_kernels_attention
    import test_kernels_cache
    import test_kernels_collective
    import test_kernels_layer
    import test_kernels_math
    import test_kernels_tensor

    modules = (test_kernels_math, test_kernels_tensor, test_kernels_attention, test_kernels_layer,
               test_kernels_cache, test_kernels_collective)
    listed = [name for m in modules for name in m.FORMULA_OPS]
    assert len(listed) == len(set(listed)), "an op is listed twice"
    assert sorted(set(REGISTRY) - set(listed)) == [], "ops without a formula test"
    assert sorted(set(listed) - set(REGISTRY)) == []
