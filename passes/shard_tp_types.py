"""Types after sharding: every op re-inferred in program order from its operands' new
(per-rank) types. Ops whose attributes spell sizes are rewritten first:

- `reshape`: its dims are grouped against its input's (the groups whose products match,
  e.g. [b, s, H*d] → [b, s, H, d]); a group whose input now holds fewer elements gets
  its leading output dim shrunk to match (H → H/tp heads, hidden → hidden/tp). The
  PaddleNLP grouped qkv ([.., kv, group + 2, d]) with replicated kv heads is the one
  reshape that instead becomes [.., 1, local group + 2, d].
- `split` on a shrunk axis: a split of a linear on concatenated weights takes their new
  widths; otherwise every size scales alike (Baichuan's W_pack q/k/v blocks), or the
  grouped qkv's [group, 1, 1] becomes [local group, 1, 1].
- GQA `repeat_kv` (concat of one unsqueezed kv value `group` times): `local group` copies.

Anything else whose type no longer infers is a graph this pass was not written for: an
error naming the op, never a silently wrong graph.
"""

from __future__ import annotations

import math

from llmc.compiler.ir import Graph, Op, TensorType
from llmc.compiler.ops import get_op
from llmc.compiler.ops.registry import OpError
from llmc.compiler.text import print_op

from .shard_tp_plan import Heads, fail

Snapshot = dict[Op, tuple[list[TensorType], list[TensorType]]]


def snapshot(g: Graph) -> Snapshot:
    """Each op's operand and result types before the pass changes anything."""
    return {op: ([v.type for v in op.inputs], [v.type for v in op.outputs]) for op in g.ops}


def _groups(src: tuple, dst: tuple) -> list[tuple[slice, slice]] | None:
    """Align two shapes of equal size into consecutive groups of equal product (symbolic
    dims must pair up one to one); None when they do not align."""
    out, i, j = [], 0, 0
    while i < len(src) and j < len(dst):
        if not isinstance(src[i], int) or not isinstance(dst[j], int):
            if src[i] != dst[j]:
                return None
            out.append((slice(i, i + 1), slice(j, j + 1)))
            i, j = i + 1, j + 1
            continue
        i0, j0, a, b = i, j, src[i], dst[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b and i < len(src) and isinstance(src[i], int):
                a, i = a * src[i], i + 1
            elif b < a and j < len(dst) and isinstance(dst[j], int):
                b, j = b * dst[j], j + 1
            else:
                return None
        out.append((slice(i0, i), slice(j0, j)))
    if i < len(src) or j < len(dst):
        return None
    return out


def _reshaped(old_in: tuple, old_out: tuple, new_in: tuple) -> tuple | None:
    """old_out with each group's leading dim resized to new_in's group size, or None."""
    groups = _groups(old_in, old_out)
    if groups is None:
        return None
    out = list(old_out)
    for si, so in groups:
        if tuple(old_in[si]) == tuple(new_in[si]):
            continue
        if not all(isinstance(d, int) for d in (*new_in[si], *old_out[so])):
            return None
        total, rest = math.prod(new_in[si]), math.prod(old_out[so][1:])
        if total % rest:
            return None
        out[so.start] = total // rest
    return tuple(out)


def _grouped_qkv_shape(old_out: tuple, heads: Heads) -> tuple | None:
    want = (heads.kv_heads, heads.group + 2, heads.head_dim)
    for i in range(len(old_out) - 2):
        if tuple(old_out[i:i + 3]) == want:
            new = (heads.kv_local, heads.group_local + 2, heads.head_dim)
            return tuple(old_out[:i]) + new + tuple(old_out[i + 3:])
    return None


def _reshape_attrs(op: Op, old_in: TensorType, old_out: TensorType, heads: Heads | None) -> dict:
    new_in = op.operand("x").type.shape
    new_out = None
    if heads is not None and heads.kv_replicas > 1:
        new_out = _grouped_qkv_shape(old_out.shape, heads)
    if new_out is None:
        new_out = _reshaped(old_in.shape, old_out.shape, new_in)
    if new_out is None:
        raise fail(f"cannot re-derive `{print_op(op)}` for input {op.operand('x').type}")
    shape = [n if s not in (0, -1) and n != o else s
             for s, o, n in zip(op.attrs["shape"], old_out.shape, new_out)]
    return {**op.attrs, "shape": tuple(shape)}


def _packed_sizes(op: Op, axis: int) -> tuple | None:
    """The out features of each weight of `split(linear(x, concat(w..)))` (fuse_qkv's
    merged q/k/v, whose slices need not shrink alike), or None."""
    lin, n = op.operand("x").producer, len(op.attrs["sizes"])
    if lin is None or lin.kind != "linear" or axis != lin.output.type.rank - 1:
        return None
    cat = lin.operand("w").producer
    if cat is None or cat.kind != "concat" or len(cat.inputs) != n:
        return None
    sizes = tuple(w.type.shape[0 if lin.attrs["transpose_w"] else 1] for w in cat.inputs)
    return sizes if all(isinstance(s, int) for s in sizes) else None


def _split_attrs(op: Op, old_in: TensorType, heads: Heads | None) -> dict:
    axis = op.attrs["axis"] % old_in.rank
    was, now = old_in.shape[axis], op.operand("x").type.shape[axis]
    sizes = op.attrs["sizes"]
    if was == now:
        return op.attrs
    packed = _packed_sizes(op, axis)
    if packed is not None:
        return {**op.attrs, "sizes": packed}
    if isinstance(was, int) and isinstance(now, int):
        if all(s * now % was == 0 for s in sizes):
            return {**op.attrs, "sizes": tuple(s * now // was for s in sizes)}
        if heads is not None and tuple(sizes) == (heads.group, 1, 1):
            return {**op.attrs, "sizes": (heads.group_local, 1, 1)}
    raise fail(f"cannot re-derive the sizes of `{print_op(op)}` for input {op.operand('x').type}")


def _concat_attrs(op: Op, heads: Heads | None) -> list | None:
    """The operands of HF's GQA `repeat_kv`, concat(unsqueeze(kv, [2]) × group, axis 2),
    at this rank's group size (which changes when kv heads are replicated, or with a
    single kv head, even though the kv operand keeps its type then)."""
    xs = op.operands("xs")
    if heads is None or len(set(xs)) != 1 or len(xs) != heads.group or op.attrs["axis"] != 2:
        return None
    un = xs[0].producer
    if un is None or un.kind != "unsqueeze" or tuple(un.attrs["axes"]) != (2,):
        return None
    return [xs[0]] * heads.group_local


def _rewrite_attrs(op: Op, old: Snapshot, heads: Heads | None) -> None:
    old_in, old_out = old[op]
    if op.kind == "reshape":
        op.attrs = _reshape_attrs(op, old_in[0], old_out[0], heads)
    elif op.kind == "split":
        op.attrs = _split_attrs(op, old_in[0], heads)
    elif op.kind == "concat":
        xs = _concat_attrs(op, heads)
        if xs is not None and len(xs) != len(op.inputs):
            x = xs[0]
            op.inputs = xs
            x.users[op] = None


def reinfer(g: Graph, old: Snapshot, heads: Heads | None) -> None:
    """Re-infer every op's result types in program order (see the module docstring)."""
    for op in g.ops:
        opdef = get_op(op.kind)
        if op in old and (op.kind == "concat" or [v.type for v in op.inputs] != old[op][0]):
            _rewrite_attrs(op, old, heads)
        try:
            op.attrs = opdef.normalize_attrs(op.attrs)
            types = opdef.infer_types([v.type for v in op.inputs], op.attrs)
        except OpError as e:
            raise fail(f"`{print_op(op)}` no longer type-checks on this rank's shapes: {e}") from None
        for v, t in zip(op.outputs, types):
            v.type = t
