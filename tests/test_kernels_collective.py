"""Collective, shard and MC2 ops (compiler/ops/collective.py, mc2.py) against values written
from their formulas, over all ranks through their group kernels."""

import numpy as np
import pytest

from llmc.compiler.ops import OpError, get_op
from llmc.compiler.ops.collective import gather_dim, run_group, shard_dim

FORMULA_OPS = ("rank", "all_reduce", "grad_all_reduce", "all_gather", "reduce_scatter", "shard",
               "parallel_embedding", "matmul_all_reduce", "all_gather_matmul",
               "matmul_reduce_scatter")


def one(name, *arrays, **attrs):
    op = get_op(name)
    return op.run([np.asarray(a) for a in arrays], op.normalize_attrs(attrs))[0]


def test_rank_numbers_the_ranks():
    assert [int(r[0]) for r in run_group("rank", [[], [], []], nranks=3)] == [0, 1, 2]
    assert int(one("rank", nranks=1)) == 0


def test_a_collective_of_several_ranks_refuses_to_run_alone():
    with pytest.raises(OpError, match="needs the 2 ranks of group 'tp'"):
        one("all_reduce", np.ones(2, np.float32), nranks=2)


def test_all_reduce_sums_and_grad_all_reduce_is_identity():
    xs = [[np.array([1.0, 2.0], np.float32)], [np.array([10.0, 20.0], np.float32)]]
    assert [r[0].tolist() for r in run_group("all_reduce", xs, nranks=2)] == [[11, 22]] * 2
    assert [r[0].tolist() for r in run_group("grad_all_reduce", xs, nranks=2)] == [[1, 2],
                                                                                   [10, 20]]


def test_all_gather_and_reduce_scatter():
    xs = [[np.array([[1.0, 2.0]], np.float32)], [np.array([[3.0, 4.0]], np.float32)]]
    assert run_group("all_gather", xs, axis=1, nranks=2)[1][0].tolist() == [[1, 2, 3, 4]]
    assert run_group("all_gather", xs, axis=0, nranks=2)[0][0].tolist() == [[1, 2], [3, 4]]
    rs = run_group("reduce_scatter", xs, axis=1, nranks=2)
    assert [r[0].tolist() for r in rs] == [[[4.0]], [[6.0]]]


def test_shard_takes_the_rank_part_of_each_block():
    w = np.arange(12.0).reshape(6, 2)
    assert one("shard", w, 1, axis=0, parts=2).tolist() == [[6, 7], [8, 9], [10, 11]]
    assert one("shard", w, 1, axis=1, parts=2).tolist() == [[1], [3], [5], [7], [9], [11]]
    qkv = one("shard", w, 0, axis=0, parts=2, blocks=(2, 2, 2))  # q rows 0-1, k 2-3, v 4-5
    assert qkv.tolist() == [[0, 1], [4, 5], [8, 9]]
    # 4 ranks over 2 kv heads: ranks 2 and 3 both hold head 1
    assert one("shard", w[:2], 3, axis=0, parts=2, replicas=2).tolist() == [[2, 3]]
    with pytest.raises(OpError, match="rank 2 has no part"):
        one("shard", w, 2, axis=0, parts=2)


def test_shard_dims_round_trip_through_gather():
    assert shard_dim("x", 8, 2) == 4 and gather_dim(4, 2) == 8
    assert shard_dim("x", "seq", 2) == "seq_div2" and gather_dim("seq_div2", 2) == "seq"
    assert gather_dim("seq", 2) == "?"
    with pytest.raises(OpError, match="does not divide"):
        shard_dim("x", 5, 2)


def test_parallel_embedding_looks_up_only_its_vocabulary_range():
    table = np.array([[1.0], [2.0]], np.float32)  # rank 1 of 2: vocabulary rows 2, 3
    out = one("parallel_embedding", np.array([0, 2, 3, 4]), table, 1)
    assert out.tolist() == [[0.0], [1.0], [2.0], [0.0]]


def test_mc2_ops_are_matmul_then_collective():
    x0, x1 = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0]], np.float32)
    w = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)  # [out, in]: y = [a + b, b]
    ranks = [[x0, w], [x1, w]]
    assert run_group("matmul_all_reduce", ranks, nranks=2)[0][0].tolist() == [[10, 6]]
    gm = run_group("all_gather_matmul", ranks, axis=0, nranks=2)
    assert gm[1][0].tolist() == [[3, 2], [7, 4]]
    rs = run_group("matmul_reduce_scatter", ranks, axis=1, nranks=2)
    assert [r[0].tolist() for r in rs] == [[[10]], [[6]]]
