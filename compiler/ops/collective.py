"""Ops of tensor-parallel graphs: the rank, weight shards and the collectives.

A sharded graph is SPMD: every rank runs the same ops on its own slices. Only `rank`
depends on which process runs it, and the collectives combine the ranks' operands. So
besides its one-rank kernel (used when the group has a single rank), each of these ops
has a *group kernel* over all ranks at once: `group_kernel(per_rank_args, attrs)` takes one
operand list per rank and returns one result list per rank. That is the reference
semantics the simulator (runtime/simulate.py) runs ranks in lockstep with, and what a
distributed runtime's collectives must reproduce.

Forward semantics are all the IR states. For training, each collective also has the
adjoint a runtime must give it: `all_reduce` ↔ identity, `grad_all_reduce` (identity
forward) ↔ all-reduce of the gradient, `all_gather` ↔ `reduce_scatter`.

Sharded symbolic dims are named `<dim>_div<n>` (e.g. `seq_div2`), so an all-gather of
`seq_div2` over 2 ranks is `seq` again.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import Dim, DType, TensorType
from .registry import REGISTRY, AttrSpec, OpError, defop, get_op
from .shapes import expect_int, expect_rank, norm_axis

GROUP_ATTRS = {"group": AttrSpec("str", "tp"), "nranks": AttrSpec("int")}
GroupKernel = Callable[[list[list[np.ndarray]], dict], list[list[np.ndarray]]]


def shard_dim(op: str, d: Dim, parts: int) -> Dim:
    """The size of dim `d` split into `parts` (a symbol becomes `<d>_div<parts>`)."""
    if isinstance(d, int):
        if d % parts:
            raise OpError(f"op '{op}': dim {d} does not divide into {parts} parts")
        return d // parts
    return "?" if d == "?" else f"{d}_div{parts}"


def gather_dim(d: Dim, parts: int) -> Dim:
    """The size of dim `d` gathered from `parts` ranks (inverse of `shard_dim`)."""
    if isinstance(d, int):
        return d * parts
    suffix = f"_div{parts}"
    return d[: -len(suffix)] if d.endswith(suffix) else "?"


def defcollective(name: str, inputs: tuple[str, ...], group_kernel: GroupKernel,
                  infer: Callable, attrs: dict[str, AttrSpec] | None = None):
    """Declare an op whose meaning spans the ranks of a group; `group_kernel` is the
    reference over all ranks, and the one-rank kernel is that group kernel for nranks 1."""
    all_attrs = {**(attrs or {}), **GROUP_ATTRS}

    def one_rank(*arrays, **at):
        if at["nranks"] != 1:
            raise OpError(f"op '{name}' needs the {at['nranks']} ranks of group "
                          f"'{at['group']}': run it with the simulator or a distributed runtime")
        return group_kernel([list(arrays)], at)[0]

    one_rank.__doc__ = group_kernel.__doc__
    defop(name, inputs, attrs=all_attrs, infer=infer, traits=("collective",))(one_rank)
    REGISTRY[name].group_kernel = group_kernel


def run_group(kind: str, per_rank: list[list[np.ndarray]], **attrs) -> list[list[np.ndarray]]:
    """Run a registered op over all ranks: its group kernel, or its kernel rank by rank."""
    op = get_op(kind)
    at = op.normalize_attrs(attrs)
    if op.group_kernel is not None:
        return op.group_kernel(per_rank, at)
    return [op.run(args, at) for args in per_rank]


def _check_ranks(kind: str, per_rank: list, nranks: int) -> None:
    if len(per_rank) != nranks:
        raise OpError(f"op '{kind}': group has {nranks} ranks, got operands of {len(per_rank)}")


# ---- rank ------------------------------------------------------------------------
def _rank_group(per_rank, attrs):
    """This process's index in the group, as an i64 scalar."""
    _check_ranks("rank", per_rank, attrs["nranks"])
    return [[np.array(r, dtype=np.int64)] for r in range(attrs["nranks"])]


defcollective("rank", (), _rank_group, infer=lambda **_: TensorType(DType.i64, ()))


# ---- all_reduce / grad_all_reduce --------------------------------------------------
def _all_reduce_group(per_rank, attrs):
    """The elementwise sum of `x` over the ranks, on every rank."""
    _check_ranks("all_reduce", per_rank, attrs["nranks"])
    total = np.sum(np.stack([args[0] for args in per_rank]), axis=0).astype(per_rank[0][0].dtype)
    return [[total.copy()] for _ in per_rank]


def _grad_all_reduce_group(per_rank, attrs):
    """`x` unchanged; in training its gradient is all-reduced (enters a tensor-parallel region)."""
    _check_ranks("grad_all_reduce", per_rank, attrs["nranks"])
    return [[args[0]] for args in per_rank]


defcollective("all_reduce", ("x",), _all_reduce_group, infer=lambda x, **_: x)
defcollective("grad_all_reduce", ("x",), _grad_all_reduce_group, infer=lambda x, **_: x)


# ---- all_gather / reduce_scatter -------------------------------------------------
def _along(x: TensorType, axis: int, op: str, new: Dim) -> TensorType:
    ax = norm_axis(axis, x.rank, op)
    return x.with_shape(x.shape[:ax] + (new,) + x.shape[ax + 1:])


def _gather_infer(x: TensorType, axis, group, nranks):
    return _along(x, axis, "all_gather", gather_dim(x.shape[norm_axis(axis, x.rank)], nranks))


def _scatter_infer(x: TensorType, axis, group, nranks):
    ax = norm_axis(axis, x.rank, "reduce_scatter")
    return _along(x, axis, "reduce_scatter", shard_dim("reduce_scatter", x.shape[ax], nranks))


def _all_gather_group(per_rank, attrs):
    """The ranks' `x` concatenated along `axis` in rank order, on every rank."""
    _check_ranks("all_gather", per_rank, attrs["nranks"])
    full = np.concatenate([args[0] for args in per_rank], axis=attrs["axis"])
    return [[full.copy()] for _ in per_rank]


def _reduce_scatter_group(per_rank, attrs):
    """The sum of `x` over the ranks, split along `axis`: rank r keeps part r."""
    total = _all_reduce_group(per_rank, attrs)[0][0]
    if total.shape[attrs["axis"]] % attrs["nranks"]:
        raise OpError(f"op 'reduce_scatter': dim {total.shape[attrs['axis']]} does not divide "
                      f"into {attrs['nranks']} ranks")
    parts = np.split(total, attrs["nranks"], axis=attrs["axis"])
    return [[p.copy()] for p in parts]


_AXIS = {"axis": AttrSpec("int", 0)}
defcollective("all_gather", ("x",), _all_gather_group, infer=_gather_infer, attrs=_AXIS)
defcollective("reduce_scatter", ("x",), _reduce_scatter_group, infer=_scatter_infer, attrs=_AXIS)


# ---- shard -------------------------------------------------------------------------
def _shard_infer(x: TensorType, rank: TensorType, axis, parts, replicas, blocks):
    expect_int("shard", "rank", rank)
    expect_rank("shard", "rank", rank, 0)
    ax = norm_axis(axis, x.rank, "shard")
    if parts < 1 or replicas < 1:
        raise OpError(f"op 'shard': parts and replicas must be >= 1, got {parts}, {replicas}")
    d = x.shape[ax]
    if blocks:
        if isinstance(d, int) and sum(blocks) != d:
            raise OpError(f"op 'shard': blocks {list(blocks)} do not add up to dim {d}")
        return _along(x, ax, "shard", sum(shard_dim("shard", b, parts) for b in blocks))
    return _along(x, ax, "shard", shard_dim("shard", d, parts))


@defop("shard", ("x", "rank"), infer=_shard_infer,
       attrs={"axis": AttrSpec("int", 0), "parts": AttrSpec("int"),
              "replicas": AttrSpec("int", 1), "blocks": AttrSpec("ints", ())})
def shard(x, rank, axis, parts, replicas, blocks):
    """Part `rank // replicas` of `parts` equal parts of `x` along `axis`; with `blocks`, the
    axis is those consecutive blocks (e.g. q, k, v of a packed weight) and the part is taken
    from each block and concatenated."""
    piece = int(rank) // replicas
    if not 0 <= piece < parts:
        raise OpError(f"op 'shard': rank {int(rank)} has no part (parts={parts}, "
                      f"replicas={replicas})")
    sections = np.split(x, np.cumsum(blocks)[:-1], axis=axis) if blocks else [x]
    return np.concatenate([np.split(s, parts, axis=axis)[piece] for s in sections], axis=axis)


# ---- parallel_embedding ------------------------------------------------------------
def _pemb_infer(ids: TensorType, table: TensorType, rank: TensorType):
    expect_int("parallel_embedding", "ids", ids)
    expect_int("parallel_embedding", "rank", rank)
    expect_rank("parallel_embedding", "table", table, 2)
    return TensorType(table.dtype, ids.shape + (table.shape[1],))


@defop("parallel_embedding", ("ids", "table", "rank"), infer=_pemb_infer)
def parallel_embedding(ids, table, rank):
    """This rank's part of a vocabulary-parallel lookup: rows of `table` (the vocabulary
    rows rank*rows .. (rank+1)*rows - 1) for ids in that range, zeros for the others; an
    all_reduce over the group gives the full embedding."""
    local = ids - int(rank) * table.shape[0]
    mine = (local >= 0) & (local < table.shape[0])
    rows = table[np.where(mine, local, 0)]
    return np.where(mine[..., None], rows, np.zeros((), table.dtype))
