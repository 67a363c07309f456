"""The CPU training composites' faster forms give the plain forms' values bit for bit."""

import numpy as np
import pytest

pytest.importorskip("paddle")

from llmc.runtime.paddle.env import choose_kernels  # noqa: E402
from llmc.runtime.paddle.lower import Lowering  # noqa: E402
from llmc.runtime.paddle.nn_ops import full_rope_tables, rope_tables, rotate  # noqa: E402


@pytest.mark.parametrize("neox", [True, False])
def test_rope_as_matmul_turn_equals_rotate(neox):
    ctx = Lowering(choose_kernels("cpu"))
    p = ctx.paddle
    x = p.to_tensor(np.random.default_rng(0).standard_normal((2, 5, 3, 8), np.float32))
    pos = p.to_tensor(np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]))
    cos, sin, turn = full_rope_tables(ctx, pos, x.shape, 10000.0, 1.0, neox)
    c0, s0 = rope_tables(ctx, pos, 8, 10000.0, 1.0)
    want = rotate(ctx, x, c0.unsqueeze(2), s0.unsqueeze(2), neox).numpy()
    got = (x * cos + p.matmul(x, turn) * sin).numpy()
    assert np.array_equal(got, want)
    assert full_rope_tables(ctx, pos, x.shape, 10000.0, 1.0, neox)[0] is cos  # kept
    other = p.to_tensor(pos.numpy())
    assert full_rope_tables(ctx, other, x.shape, 10000.0, 1.0, neox)[0] is not cos
