"""This process's place in a tensor- × data-parallel run on paddle.distributed.

The ranks form a grid: global rank = dp_rank * tp + tp_rank, so the ranks of one
tensor-parallel group are consecutive (on one node, as Megatron and Paddle's fleet place
them). `init_world(tp, dp, device)` joins the process group a launcher set up
(`python -m paddle.distributed.launch`, which exports PADDLE_TRAINER_ID and
PADDLE_TRAINERS_NUM): Paddle's `init_parallel_env` (gloo on CPU, NCCL on GPUs, XCCL on
custom devices), then one `paddle.distributed.new_group` per tp and per dp group.

`World.comm` counts every collective the lowerings issue (kind → calls, bytes), so a
step's communication can be measured: `world.comm.reset()`, run, `world.comm.summary()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llmc.compiler.errors import LlmcError

from .env import import_paddle, place_for

RANK_ENV, SIZE_ENV = "PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM"


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process was started by paddle.distributed.launch."""
    rank, size = os.environ.get(RANK_ENV), os.environ.get(SIZE_ENV)
    if rank is None or size is None:
        return None
    try:
        return int(rank), int(size)
    except ValueError:
        raise LlmcError(f"{RANK_ENV}={rank!r}, {SIZE_ENV}={size!r}: not integers") from None


@dataclass
class CommLog:
    """Collectives issued by this process: 'kind', 'kind (backward)' or 'all_reduce (tp
    scalars)' (norms, token counts) → [calls, bytes]. The bytes are those of the tensor
    this rank contributes (all_gather: its shard; reduce_scatter: its whole input)."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def record(self, kind: str, nbytes: int, backward: bool = False) -> None:
        """Count one collective of `nbytes`."""
        entry = self.counts.setdefault(f"{kind} (backward)" if backward else kind, [0, 0])
        entry[0] += 1
        entry[1] += int(nbytes)

    def reset(self) -> None:
        """Forget what was counted."""
        self.counts.clear()

    def summary(self) -> dict[str, dict[str, int]]:
        """kind → {"calls", "bytes"}, sorted by kind."""
        return {k: {"calls": c, "bytes": b} for k, (c, b) in sorted(self.counts.items())}


class World:
    """The tp and dp groups of this rank. `groups[name]` is a Paddle Group, or None for a
    group of one rank; `backend` is Paddle's ('gloo', 'nccl', 'xccl'...)."""

    def __init__(self, tp: int, dp: int, rank: int, groups: dict, backend: str, device: str):
        self.tp, self.dp, self.rank = tp, dp, rank
        self.tp_rank, self.dp_rank = rank % tp, rank // tp
        self.groups, self.backend, self.device = groups, backend, device
        self.comm = CommLog()

    @property
    def nranks(self) -> int:
        """Processes in the run (tp × dp)."""
        return self.tp * self.dp

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the run's files (rank 0)."""
        return self.rank == 0

    def group(self, name: str, nranks: int):
        """The Paddle group an op of group `name` for `nranks` ranks runs on."""
        size = {"tp": self.tp, "dp": self.dp}.get(name)
        if size is None:
            raise LlmcError(f"collective group '{name}': this run has groups 'tp' and 'dp'")
        if size != nranks:
            raise LlmcError(f"a collective of group '{name}' is for {nranks} ranks, but this run "
                            f"has {name}={size}")
        return self.groups.get(name)

    def barrier(self) -> None:
        """Wait for every rank of the run."""
        if self.nranks > 1:
            import_paddle().distributed.barrier()

    def sum_over(self, name: str, values: list[float]) -> list[float]:
        """`values` summed elementwise over the ranks of group `name` (a float64 all_reduce)."""
        paddle = import_paddle()
        group = self.groups.get(name)
        if group is None:
            return list(values)
        t = paddle.to_tensor(values, dtype="float64")
        paddle.distributed.all_reduce(t, group=group)
        self.comm.record(f"all_reduce ({name} scalars)", t.numel().item() * 8)
        return [float(v) for v in t.numpy()]


def single_world(device: str = "cpu") -> World:
    """The world of a process that runs alone (tp = dp = 1)."""
    return World(1, 1, 0, {"tp": None, "dp": None}, "none", device)


def grid_groups(tp: int, dp: int) -> tuple[list[list[int]], list[list[int]]]:
    """The global ranks of every tp group and every dp group."""
    tp_groups = [[d * tp + t for t in range(tp)] for d in range(dp)]
    dp_groups = [[d * tp + t for d in range(dp)] for t in range(tp)]
    return tp_groups, dp_groups


def init_world(tp: int, dp: int = 1, device: str = "cpu") -> World:
    """Join the launched process group as one rank of a tp × dp run on `device` (its kind:
    the launcher picks this rank's device index)."""
    if tp < 1 or dp < 1:
        raise LlmcError(f"--tp and --dp must be >= 1, got {tp} and {dp}")
    launched = launched_rank()
    if tp * dp == 1 and (launched is None or launched[1] == 1):
        return single_world(place_for(device))
    if launched is None:
        raise LlmcError(f"--tp {tp} --dp {dp}: not inside paddle.distributed.launch "
                        f"({RANK_ENV} and {SIZE_ENV} are unset)")
    rank, size = launched
    if size != tp * dp:
        raise LlmcError(f"the launch has {size} processes, but --tp {tp} --dp {dp} needs "
                        f"{tp * dp}")
    paddle = import_paddle()
    dist = paddle.distributed
    kind = device.partition(":")[0]
    place = place_for(kind if kind == "cpu" else f"{kind}:{dist.ParallelEnv().device_id}")
    dist.init_parallel_env()
    tp_groups, dp_groups = grid_groups(tp, dp)
    mine = {}
    for name, groups in (("tp", tp_groups), ("dp", dp_groups)):
        mine[name] = None
        for ranks in groups:
            if len(ranks) < 2:
                continue
            # gloo connects a new group's ranks through keys in the shared store; two groups
            # created at once (disjoint ranks) collide there, so create them one at a time
            group = dist.new_group(ranks)
            dist.barrier()
            if rank in ranks:
                mine[name] = group
    return World(tp, dp, rank, mine, str(dist.get_backend()).lower(), place)
