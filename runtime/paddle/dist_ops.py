"""Paddle lowerings of the tensor-parallel ops (compiler/ops/collective.py, mc2.py) on
paddle.distributed's collectives, differentiable with the adjoints the IR states:
all_reduce ↔ identity, grad_all_reduce (identity) ↔ all_reduce, all_gather ↔
reduce_scatter. Paddle's own mp_ops (`_c_identity`, `_mp_allreduce`, `_c_concat`) have no
CPU kernels and gloo has no reduce_scatter, so the ops are PyLayers over
`paddle.distributed.all_reduce / all_gather / reduce_scatter` (on gloo: all_reduce and
this rank's slice). `matmul_all_reduce` runs paddle-custom-npu's fused MC2 kernel
(`paddle_custom_device.npu.fused_mm_allreduce`) on NPUs that have it, and matmul then
all_reduce elsewhere; the kernel report says which ran.

A graph with collectives over more than one rank runs on `DistKernels` (the kernel choice
plus the `World` of this rank: runtime/paddle/dist.py), which dist_program.DistProgram
builds; `shard` of a parameter it created from its slice (`folded`) is that parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dist import World
from .dist_shard import ShardSpec
from .env import Kernels
from .lower import Lowering, LoweringError, lowers, operand_reader

GLOO_REDUCE_SCATTER = "all_reduce, then this rank's slice (ProcessGroupGloo has no reduce_scatter)"


@dataclass
class DistKernels(Kernels):
    """The kernels of one rank of a sharded graph: collectives on `world`'s groups;
    parameters in `folded` already hold only this rank's shard."""

    world: World | None = None
    folded: frozenset = field(default_factory=frozenset)


class Comm:
    """The collectives of one tp group (`rank`: this process's place in it), each counted in
    the world's CommLog."""

    def __init__(self, paddle, world: World | None, group, nranks: int):
        self.paddle, self.world, self.group, self.nranks = paddle, world, group, nranks
        self.rank = 0 if world is None else world.tp_rank
        self.gloo = world is None or world.backend == "gloo"

    def _log(self, kind: str, x, backward: bool) -> None:
        if self.world is not None:
            self.world.comm.record(kind, x.numel().item() * x.element_size(), backward)

    def all_reduce(self, x, backward: bool = False):
        """The sum of `x` over the group (a new tensor)."""
        y = x.clone()
        if self.nranks > 1:
            self._log("all_reduce", x, backward)
            self.paddle.distributed.all_reduce(y, group=self.group)
        return y

    def all_reduce_max(self, x, kind: str = "all_reduce (max)"):
        """The elementwise max of `x` over the group (a new tensor; not differentiable)."""
        y = x.clone()
        if self.nranks > 1:
            self._log(kind, x, False)
            self.paddle.distributed.all_reduce(y, op=self.paddle.distributed.ReduceOp.MAX,
                                               group=self.group)
        return y

    def all_gather(self, x, axis: int, backward: bool = False):
        """The group's `x` concatenated along `axis` in rank order."""
        if self.nranks == 1:
            return x.clone()
        self._log("all_gather", x, backward)
        parts: list = []
        self.paddle.distributed.all_gather(parts, x.contiguous(), group=self.group)
        return self.paddle.concat(parts, axis=axis)

    def reduce_scatter(self, x, axis: int, backward: bool = False):
        """This rank's part along `axis` of the sum of `x` over the group."""
        if self.nranks == 1:
            return x.clone()
        p = self.paddle
        if self.gloo:
            return p.split(self.all_reduce(x, backward), self.nranks, axis=axis)[self.rank]
        self._log("reduce_scatter", x, backward)
        chunks = [c.contiguous() for c in p.split(x, self.nranks, axis=axis)]
        out = p.empty_like(chunks[0])
        p.distributed.reduce_scatter(out, chunks, group=self.group)
        return out


def make_layers():
    """The PyLayers of the collectives (defined on first use: Paddle loads lazily)."""
    from paddle.autograd import PyLayer

    class AllReduce(PyLayer):
        @staticmethod
        def forward(ctx, x, comm):
            return comm.all_reduce(x)

        @staticmethod
        def backward(ctx, dy):
            return dy

    class GradAllReduce(PyLayer):
        @staticmethod
        def forward(ctx, x, comm):
            ctx.comm = comm
            return x.clone()

        @staticmethod
        def backward(ctx, dy):
            return ctx.comm.all_reduce(dy, backward=True)

    class AllGather(PyLayer):
        @staticmethod
        def forward(ctx, x, comm, axis):
            ctx.comm, ctx.axis = comm, axis
            return comm.all_gather(x, axis)

        @staticmethod
        def backward(ctx, dy):
            return ctx.comm.reduce_scatter(dy, ctx.axis, backward=True)

    class ReduceScatter(PyLayer):
        @staticmethod
        def forward(ctx, x, comm, axis):
            ctx.comm, ctx.axis = comm, axis
            return comm.reduce_scatter(x, axis)

        @staticmethod
        def backward(ctx, dy):
            return ctx.comm.all_gather(dy, ctx.axis, backward=True)

    class ShardActivation(PyLayer):
        """This rank's part of a replicated tensor; the adjoint puts every rank's part
        cotangent back in place and sums them, so the input's cotangent is whole on
        every rank (as a replicated value's is)."""

        @staticmethod
        def forward(ctx, x, comm, spec):
            ctx.comm, ctx.spec, ctx.dim = comm, spec, int(x.shape[spec.axis])
            return spec.take_paddle(comm.paddle, x)

        @staticmethod
        def backward(ctx, dy):
            whole = ctx.spec.place_paddle(ctx.comm.paddle, dy, ctx.dim)
            return ctx.comm.all_reduce(whole, backward=True)

    return {c.__name__: c for c in (AllReduce, GradAllReduce, AllGather, ReduceScatter,
                                    ShardActivation)}


_LAYERS: dict = {}


def layer(name: str):
    """The PyLayer class `name` of make_layers."""
    if not _LAYERS:
        _LAYERS.update(make_layers())
    return _LAYERS[name]


def world_of(ctx: Lowering) -> World | None:
    """The World the lowering runs in (None: a one-process program)."""
    return getattr(ctx.kernels, "world", None)


def comm_for(op, ctx: Lowering) -> Comm:
    """The collectives of op's group; a group of several ranks needs a World."""
    world, nranks = world_of(ctx), op.attrs["nranks"]
    if world is None:
        if nranks > 1:
            raise LoweringError(f"op '{op.kind}' is for {nranks} ranks: run the sharded graph "
                                "with one process per rank (llmc ... --tp N, DistProgram)")
        return Comm(ctx.paddle, None, None, 1)
    try:
        group = world.group(op.attrs["group"], nranks)
    except Exception as e:
        raise LoweringError(f"op '{op.kind}': {e}") from None
    return Comm(ctx.paddle, world, group, nranks)


@lowers("rank")
def _rank(op, ctx):
    comm = comm_for(op, ctx)
    ctx.kernels.note("rank", "constant (this process's tp rank)")
    value = ctx.paddle.to_tensor(comm.rank, dtype="int64")
    return lambda env: [value]


@lowers("shard")
def _shard(op, ctx):
    x, rank = op.operand("x"), op.operand("rank")
    if x.is_param and x.name in getattr(ctx.kernels, "folded", ()):
        ctx.kernels.note("shard", "parameters created from their slice at load")
        return lambda env: [env[x]]
    ctx.kernels.note("shard", "slices (gradient: all_reduce of the placed parts)")
    layer_ = layer("ShardActivation")
    world, producer = world_of(ctx), rank.producer
    if producer is not None and producer.kind == "rank":
        comm = comm_for(producer, ctx)
        spec = ShardSpec.of(op.attrs, comm.rank)
        return lambda env: [layer_.apply(env[x], comm, spec)]
    if world is not None and world.tp > 1:
        raise LoweringError("op 'shard': its rank operand is not a `rank` op")
    comm = Comm(ctx.paddle, world, None, 1)  # one rank: the rank is data
    return lambda env: [layer_.apply(env[x], comm, ShardSpec.of(op.attrs, int(env[rank])))]


@lowers("parallel_embedding")
def _parallel_embedding(op, ctx):
    args = operand_reader(op, "ids", "table", "rank")
    p = ctx.paddle

    def run(env):
        ids, table, rank = args(env)
        rows = int(table.shape[0])
        local = ids - rank * rows
        mine = p.logical_and(local >= 0, local < rows)
        rows_out = ctx.F.embedding(p.where(mine, local, p.zeros_like(local)), table)
        return [rows_out * mine.unsqueeze(-1).astype(rows_out.dtype)]

    return run


@lowers("all_reduce", "grad_all_reduce")
def _all_reduce(op, ctx):
    comm, x = comm_for(op, ctx), op.operand("x")
    kind = "AllReduce" if op.kind == "all_reduce" else "GradAllReduce"
    ctx.kernels.note(op.kind, "paddle.distributed.all_reduce" + (
        "" if op.kind == "all_reduce" else " (backward)"))
    pylayer = layer(kind)
    return lambda env: [pylayer.apply(env[x], comm)]


@lowers("all_gather", "reduce_scatter")
def _gather_scatter(op, ctx):
    comm, x, axis = comm_for(op, ctx), op.operand("x"), op.attrs["axis"]
    if op.kind == "reduce_scatter" and comm.gloo:
        ctx.kernels.note(op.kind, GLOO_REDUCE_SCATTER)
    else:
        ctx.kernels.note(op.kind, f"paddle.distributed.{op.kind}")
    pylayer = layer("AllGather" if op.kind == "all_gather" else "ReduceScatter")
    return lambda env: [pylayer.apply(env[x], comm, axis)]


def _matmul(ctx, transpose_w: bool):
    return lambda x, w: ctx.paddle.matmul(x, w, transpose_y=transpose_w)


@lowers("matmul_all_reduce")
def _matmul_all_reduce(op, ctx):
    from .dist_mc2 import npu_matmul_all_reduce

    comm, args = comm_for(op, ctx), operand_reader(op, "x", "w")
    tw = op.attrs["transpose_w"]
    fused = npu_matmul_all_reduce(ctx, comm, tw)
    if fused is not None:
        ctx.kernels.note(op.kind, "paddle_custom_device.npu.fused_mm_allreduce (MC2)")
        return lambda env: [fused(*args(env))]
    ctx.kernels.note(op.kind, f"matmul + paddle.distributed.all_reduce (no fused MC2 kernel on "
                              f"{ctx.kernels.device})")
    mm, reduce = _matmul(ctx, tw), layer("AllReduce")
    return lambda env: [reduce.apply(mm(*args(env)), comm)]


@lowers("all_gather_matmul", "matmul_reduce_scatter")
def _mc2_gather_scatter(op, ctx):
    comm, args = comm_for(op, ctx), operand_reader(op, "x", "w")
    axis, mm = op.attrs["axis"], _matmul(ctx, op.attrs["transpose_w"])
    if op.kind == "all_gather_matmul":
        ctx.kernels.note(op.kind, "paddle.distributed.all_gather + matmul (no fused MC2 kernel "
                                  "is used)")
        gather = layer("AllGather")

        def gathered(env):
            x, w = args(env)
            return [mm(gather.apply(x, comm, axis), w)]

        return gathered
    why = GLOO_REDUCE_SCATTER if comm.gloo else "paddle.distributed.reduce_scatter"
    ctx.kernels.note(op.kind, f"matmul + {why} (no fused MC2 kernel is used)")
    scatter = layer("ReduceScatter")
    return lambda env: [scatter.apply(mm(*args(env)), comm, axis)]

