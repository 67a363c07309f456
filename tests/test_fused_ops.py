"""Fused ops: inferred types match their kernels' outputs, and fused == unfused numerically."""

import numpy as np
import pytest
from llmc.compiler.ir import DType, TensorType
from llmc.compiler.ops import get_op
from llmc.compiler.ops.registry import OpError

RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def infer(kind, arrays, **attrs):
    op = get_op(kind)
    types = [TensorType(DType.from_np(a.dtype), a.shape) for a in arrays]
    return op.infer_types(types, op.normalize_attrs(attrs))


def kernel(kind, arrays, **attrs):
    op = get_op(kind)
    return op.run(arrays, op.normalize_attrs(attrs))


def assert_types_match(kind, arrays, **attrs):
    outs = kernel(kind, arrays, **attrs)
    types = infer(kind, arrays, **attrs)
    assert len(types) == len(outs)
    for t, o in zip(types, outs):
        assert t.dtype.np == o.dtype and t.rank == o.ndim
        assert all(isinstance(d, str) or d == n for d, n in zip(t.shape, o.shape)), (t, o.shape)
    return outs


def test_add_rms_norm():
    x, r, w = f32(2, 3, 8), f32(2, 3, 8), f32(8)
    out, s = assert_types_match("add_rms_norm", [x, r, w], epsilon=1e-5)
    np.testing.assert_array_equal(s, x + r)
    ref = (x + r) / np.sqrt(np.mean((x + r) ** 2, -1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transpose_w", [True, False])
def test_lm_head(transpose_w):
    x, nw = f32(3, 8), f32(8)
    w = f32(16, 8) if transpose_w else f32(8, 16)
    (out,) = assert_types_match("lm_head", [x, nw, w], epsilon=1e-6, transpose_w=transpose_w)
    n = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * nw
    np.testing.assert_allclose(out, n @ (w.T if transpose_w else w), rtol=1e-5, atol=1e-5)


def test_remove_padding_equals_the_padding_chain():
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    lens = np.array([2, 4, 1], np.int32)
    outs = assert_types_match("remove_padding", [ids, lens])
    cum = np.cumsum(4 - lens).astype(np.int32)
    want = kernel("get_padding_offset", [ids, cum, np.asarray(lens.sum(), np.int32), lens])
    for a, b in zip(outs, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(outs[0], [0, 1, 4, 5, 6, 7, 8])


def test_fused_layer_types_match_its_kernel_in_a_compiled_graph():
    """The reference interpreter checks every result against its declared (inferred) type."""
    from llmc.compiler.passmanager import PassContext
    from llmc.frontends.config import parse_config
    from llmc.frontends.fixtures import random_weights, tiny_config
    from llmc.frontends.naming import naming_for
    from llmc.passes.pipelines import pipeline_for
    from llmc.runtime.generate import Generator

    from llmc import api
    from llmc.compile import build_graph, model_facts

    cfg = parse_config(tiny_config("llama_gqa"))
    g = build_graph(cfg, naming_for("hf"), "inference")
    api.run_pipeline(
        g, pipeline_for("ascend910b"), ctx=PassContext(model=model_facts(cfg, "inference"))
    )
    assert sorted(op.attrs["flag"] for op in g.ops if op.kind == "fused_blha_layer") == [0, 1, 2]
    w = random_weights("llama_gqa")
    toks = Generator(g, {k: w[k] for k in g.params}).generate([[1, 2, 3], [4]], 3)
    assert [len(t) for t in toks] == [3, 3]


def test_fused_layer_rejects_a_bad_flag_and_missing_max_len():
    t = TensorType(DType.f32, ("tokens", 8))
    i32 = TensorType(DType.i32, ("batch",))
    cache = TensorType(DType.f32, ("n", 2, 4, 4))
    ops = [
        t,
        t,
        TensorType(DType.f32, (8,)),
        TensorType(DType.f32, (24, 8)),
        TensorType(DType.f32, (8, 8)),
        TensorType(DType.f32, (8,)),
        TensorType(DType.f32, (32, 8)),
        TensorType(DType.f32, (8, 16)),
        cache,
        cache,
        i32,
        i32,
        i32,
        TensorType(DType.i32, ("tokens",)),
        i32,
        i32,
        i32,
        TensorType(DType.i32, ("batch", 4)),
    ]
    op = get_op("fused_blha_layer")
    attrs = {"num_heads": 2, "kv_heads": 2, "head_dim": 4, "block_size": 4, "max_seq_len": 16}
    assert len(op.infer_types(ops, op.normalize_attrs(dict(attrs, flag=0)))) == 4
    with pytest.raises(OpError, match="flag must be"):
        op.infer_types(ops, op.normalize_attrs(dict(attrs, flag=5)))
    with pytest.raises(OpError, match="needs the max_len operand"):
        op.infer_types(ops, op.normalize_attrs(dict(attrs, flag=2)))
