"""The lockstep N-rank simulator (runtime/simulate.py) on a hand-sharded graph."""

import numpy as np
import pytest

from llmc.compiler.errors import LlmcError
from llmc.compiler.text import parse
from llmc.runtime.reference import run
from llmc.runtime.simulate import simulate

FULL = """graph @mlp(%x: f32[batch, 4]) {
  param @up: f32[6, 4]
  param @down: f32[4, 6]
  %h = linear(%x, @up) : f32[batch, 6]
  %y = linear(%h, @down) : f32[batch, 4]
  return %y
}
"""

SHARDED = """graph @mlp(%x: f32[batch, 4]) {
  param @up: f32[6, 4]
  param @down: f32[4, 6]
  %r = rank() {nranks = 2} : i64[]
  %up_r = shard(@up, %r) {axis = 0, parts = 2} : f32[3, 4]
  %down_r = shard(@down, %r) {axis = 1, parts = 2} : f32[4, 3]
  %xin = grad_all_reduce(%x) {nranks = 2} : f32[batch, 4]
  %h = linear(%xin, %up_r) : f32[batch, 3]
  %p = linear(%h, %down_r) : f32[batch, 4]
  %y = all_reduce(%p) {nranks = 2} : f32[batch, 4]
  return %y
}
"""


def test_column_then_row_parallel_equals_the_unsharded_graph():
    rng = np.random.default_rng(0)
    w = {"up": rng.standard_normal((6, 4)).astype(np.float32),
         "down": rng.standard_normal((4, 6)).astype(np.float32)}
    x = {"x": rng.standard_normal((3, 4)).astype(np.float32)}
    want = run(parse(FULL), x, w)[0]
    outs = simulate(parse(SHARDED), x, w)
    assert len(outs) == 2
    for (y,) in outs:
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_a_graph_for_two_ranks_is_refused_on_three():
    with pytest.raises(LlmcError, match="sharded for 2 ranks, not 3"):
        simulate(parse(SHARDED), {"x": np.zeros((1, 4), np.float32)}, {}, nranks=3)


def test_per_rank_inputs():
    g = parse("""graph @g(%x: f32[2]) {
  %y = all_gather(%x) {nranks = 2} : f32[4]
  return %y
}
""")
    outs = simulate(g, [{"x": np.array([1, 2], np.float32)}, {"x": np.array([3, 4], np.float32)}],
                    {})
    assert [o[0].tolist() for o in outs] == [[1, 2, 3, 4]] * 2
