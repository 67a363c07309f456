"""Which part of a tensor a rank holds under `shard(x, rank) {axis, parts, replicas, blocks}`
(compiler/ops/collective.py), in numpy and in Paddle, and the inverse (one whole tensor
from every rank's part), which checkpoints and resumes at another tp need.

Along `axis`, the tensor is the consecutive `blocks` (one block of the whole axis when
none are given, e.g. q, k, v of a packed weight); rank r holds part r // replicas of each
block, concatenated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from llmc.compiler.errors import LlmcError


@dataclass(frozen=True)
class ShardSpec:
    """The attrs of a `shard` op and the part this rank holds."""

    axis: int
    parts: int
    replicas: int
    blocks: tuple[int, ...]
    piece: int

    @classmethod
    def of(cls, attrs: dict, tp_rank: int) -> "ShardSpec":
        """The spec of a shard op's attrs for the rank `tp_rank`."""
        piece = tp_rank // attrs["replicas"]
        if not 0 <= piece < attrs["parts"]:
            raise LlmcError(f"shard: rank {tp_rank} has no part (parts={attrs['parts']}, "
                            f"replicas={attrs['replicas']})")
        return cls(attrs["axis"], attrs["parts"], attrs["replicas"], tuple(attrs["blocks"]),
                   piece)

    def with_piece(self, piece: int) -> "ShardSpec":
        """The same split, another part."""
        return ShardSpec(self.axis, self.parts, self.replicas, self.blocks, piece)

    def _blocks(self, dim: int) -> tuple[int, ...]:
        blocks = self.blocks or (dim,)
        if sum(blocks) != dim or any(b % self.parts for b in blocks):
            raise LlmcError(f"shard: blocks {list(blocks)} of dim {dim} do not split into "
                            f"{self.parts} parts")
        return blocks

    def ranges(self, dim: int) -> list[tuple[int, int]]:
        """[start, stop) along the axis of each block's part, for an axis of size `dim`."""
        out, offset = [], 0
        for b in self._blocks(dim):
            size = b // self.parts
            out.append((offset + self.piece * size, offset + (self.piece + 1) * size))
            offset += b
        return out

    def take(self, x: np.ndarray) -> np.ndarray:
        """This part of `x` (a memory map stays one: only the part is read)."""
        axis = self.axis % x.ndim
        index = [slice(None)] * x.ndim
        pieces = []
        for start, stop in self.ranges(x.shape[axis]):
            index[axis] = slice(start, stop)
            pieces.append(x[tuple(index)])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis)

    def take_paddle(self, paddle, x):
        """This part of the Paddle tensor `x` (differentiable slices)."""
        axis = self.axis % len(x.shape)
        pieces = [paddle.slice(x, [axis], [start], [stop])
                  for start, stop in self.ranges(int(x.shape[axis]))]
        return pieces[0] if len(pieces) == 1 else paddle.concat(pieces, axis=axis)

    def place_paddle(self, paddle, part, dim: int):
        """A tensor of axis size `dim`, zero except for `part` at this part's place (the
        adjoint of `take_paddle`)."""
        axis = self.axis % len(part.shape)
        shape = list(part.shape)
        pieces, at, offset = [], 0, 0
        for start, stop in self.ranges(dim):
            if start > at:
                shape[axis] = start - at
                pieces.append(paddle.zeros(shape, part.dtype))
            pieces.append(paddle.slice(part, [axis], [offset], [offset + stop - start]))
            offset += stop - start
            at = stop
        if dim > at:
            shape[axis] = dim - at
            pieces.append(paddle.zeros(shape, part.dtype))
        return paddle.concat(pieces, axis=axis)


def unshard(parts_by_rank: Sequence[np.ndarray], spec: ShardSpec) -> np.ndarray:
    """The whole tensor from the part each tp rank holds (rank order; a replicated part is
    taken from the first rank that holds it)."""
    axis = spec.axis % parts_by_rank[0].ndim
    holders = [parts_by_rank[p * spec.replicas] for p in range(spec.parts)]
    part_dim = holders[0].shape[axis]
    blocks = spec.blocks or (part_dim * spec.parts,)
    sizes = [b // spec.parts for b in blocks]
    cuts = np.cumsum(sizes)[:-1]
    per_part = [np.split(h, cuts, axis=axis) for h in holders]
    whole = [np.concatenate([per_part[p][i] for p in range(spec.parts)], axis=axis)
             for i in range(len(sizes))]
    return whole[0] if len(whole) == 1 else np.concatenate(whole, axis=axis)
