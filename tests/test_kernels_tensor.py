"""Shape, indexing, dtype, constant and token-packing kernels against hand-written values."""

import ml_dtypes
import numpy as np

from llmc.compiler.ir import DType
from llmc.compiler.ops import get_op


def k(kind, *arrays, **attrs):
    """One op's reference kernel, attrs defaulted as in the IR."""
    op = get_op(kind)
    return op.run([np.asarray(a) for a in arrays], op.normalize_attrs(attrs))


FORMULA_OPS = (
    "reshape", "transpose", "concat", "split", "slice", "gather", "embedding", "cast", "constant",
    "arange", "dim_size", "seq_index", "unsqueeze", "get_padding_offset", "rebuild_padding",
    "blha_get_max_len", "remove_padding",
)
A = np.arange(6).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]


def test_reshape_keeps_zero_dims_and_infers_minus_one():
    x = np.arange(24).reshape(2, 3, 4)
    got = k("reshape", x, shape=(0, -1))[0]
    assert got.shape == (2, 12)
    np.testing.assert_array_equal(got[1], np.arange(12, 24))
    np.testing.assert_array_equal(k("reshape", A, shape=(3, 2))[0], [[0, 1], [2, 3], [4, 5]])


def test_transpose_and_unsqueeze():
    np.testing.assert_array_equal(k("transpose", A, perm=(1, 0))[0], [[0, 3], [1, 4], [2, 5]])
    x = np.arange(24).reshape(2, 3, 4)
    got = k("transpose", x, perm=(2, 0, 1))[0]
    assert got.shape == (4, 2, 3) and got[3, 1, 2] == x[1, 2, 3] == 23
    got = k("unsqueeze", A, axes=(0, 3))[0]
    assert got.shape == (1, 2, 3, 1) and got[0, 1, 2, 0] == 5


def test_concat_split_slice():
    np.testing.assert_array_equal(k("concat", A, np.array([[9], [8]]), axis=1)[0],
                                  [[0, 1, 2, 9], [3, 4, 5, 8]])
    parts = k("split", np.arange(9)[None], axis=-1, sizes=(2, 3, 4))
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3, 4]], [[5, 6, 7, 8]]]
    x = np.arange(10)[None]
    np.testing.assert_array_equal(k("slice", x, axes=(1,), starts=(2,), ends=(8,), steps=(2,))[0],
                                  [[2, 4, 6]])
    np.testing.assert_array_equal(k("slice", x, axes=(1,), starts=(-1,), ends=(2**63 - 1,))[0],
                                  [[9]])  # the last position; the end clamps
    np.testing.assert_array_equal(k("slice", A, axes=(0, 1), starts=(1, 0), ends=(2, 2))[0],
                                  [[3, 4]])


def test_gather_and_embedding():
    table = np.array([[0.5, 1], [2, 3], [4, 5]], np.float32)
    ids = np.array([[2, 0], [1, 1]])
    want = [[[4, 5], [0.5, 1]], [[2, 3], [2, 3]]]
    np.testing.assert_array_equal(k("embedding", ids, table)[0], want)
    np.testing.assert_array_equal(k("gather", table, ids)[0], want)
    np.testing.assert_array_equal(k("gather", table, np.array([1, 1, 0]), axis=1)[0],
                                  [[1, 1, 0.5], [3, 3, 2], [5, 5, 4]])


def test_cast_rounds_like_the_target_type():
    x = np.array([2.7, -2.7, 1.00390625, 3.0], np.float32)
    np.testing.assert_array_equal(k("cast", x, dtype="i64")[0], [2, -2, 1, 3])  # toward zero
    b = k("cast", x, dtype="bf16")[0]
    assert b.dtype == np.dtype(ml_dtypes.bfloat16)
    # 8 significant bits: 2.7 -> 2.703125, 1 + 2^-8 -> 1 (ties to even)
    np.testing.assert_array_equal(b.astype(np.float32), [2.703125, -2.703125, 1.0, 3.0])
    h = k("cast", np.array([65504.0, 1e-8, 0.1], np.float32), dtype="f16")[0]
    np.testing.assert_array_equal(h, np.array([65504.0, 0.0, 0.1], np.float16))
    assert k("cast", np.array([3, -1]), dtype="f32")[0].tolist() == [3.0, -1.0]


def test_constant_arange_dim_size_seq_index():
    got = k("constant", value=(0.5,), shape=(2, 2))[0]
    assert got.dtype == np.float32 and got.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    got = k("constant", value=(1.0, 2.0, 3.0, 4.0), shape=(2, 2), dtype=DType.i32)[0]
    assert got.dtype == np.int32 and got.tolist() == [[1, 2], [3, 4]]
    assert k("constant", value=(7.0,))[0].shape == ()
    got = k("arange", start=2, end=6)[0]
    assert got.dtype == np.int64 and got.tolist() == [2, 3, 4, 5]
    got = k("dim_size", np.zeros((3, 7)), axis=1)[0]
    assert got.dtype == np.int64 and got.shape == () and int(got) == 7
    got = k("seq_index", np.zeros((2, 5, 4)), axis=-2)[0]
    assert got.dtype == np.int64 and got.tolist() == [0, 1, 2, 3, 4]


# ---- packing (PaddleNLP get_padding_offset / rebuild_padding_v2) -------------------------------
IDS = np.array([[11, 12, 13, 0], [21, 0, 0, 0], [31, 32, 0, 0]])
LENS = np.array([3, 1, 2], np.int32)
# padding per row: 1, 3, 2; cumulative 1, 4, 6; before each row 0, 1, 4
PACKED = [11, 12, 13, 21, 31, 32]
CUM_BEFORE = [0, 1, 4]
PADDING_OFFSET = [0, 0, 0, 1, 4, 4]
CU_SEQLENS = [0, 3, 4, 6]


def test_get_padding_offset_known_values():
    outs = k("get_padding_offset", IDS, np.array([1, 4, 6], np.int32), np.array(6, np.int32), LENS)
    want = (PACKED, CUM_BEFORE, PADDING_OFFSET, CU_SEQLENS, CU_SEQLENS)
    assert [o.tolist() for o in outs] == [list(w) for w in want]


def test_remove_padding_known_values():
    outs = k("remove_padding", IDS, LENS)
    want = (PACKED, CUM_BEFORE, PADDING_OFFSET, CU_SEQLENS, CU_SEQLENS)
    assert [o.tolist() for o in outs] == [list(w) for w in want]
    assert [o.dtype for o in outs[1:]] == [np.int32] * 4


def test_rebuild_padding_known_values():
    h = np.arange(12, dtype=np.float32).reshape(6, 2)  # row t is [2t, 2t + 1]
    cum = np.array(CUM_BEFORE, np.int32)
    # seq 0: prefill of 3 -> its last token (packed row 2); seq 1: decode -> its only token
    # (row 3); seq 2: stopped -> zeros
    got = k("rebuild_padding", h, cum, np.array([0, 5, 0], np.int32), np.array([3, 0, 0], np.int32),
            np.array(4))[0]
    np.testing.assert_array_equal(got, [[4, 5], [6, 7], [0, 0]])
    got = k("rebuild_padding", h, cum, np.zeros(3, np.int32), LENS, np.array(4))[0]
    np.testing.assert_array_equal(got, [[4, 5], [6, 7], [10, 11]])  # rows 2, 3, 5


def test_blha_get_max_len_counts_the_first_batch_size_sequences():
    enc, dec = np.array([3, 0, 5], np.int32), np.array([0, 9, 2], np.int32)
    assert [o.tolist() for o in k("blha_get_max_len", enc, dec, np.zeros(3, np.int32))] == [[5], [9]]
    assert [o.tolist() for o in k("blha_get_max_len", enc, dec, np.zeros(2, np.int32))] == [[3], [9]]
    assert [o.tolist() for o in k("blha_get_max_len", enc, dec, np.zeros(0, np.int32))] == [[0], [0]]
