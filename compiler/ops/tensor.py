"""Shape, indexing, dtype and constant ops."""

from __future__ import annotations

import math

import numpy as np

from ..ir import Dim, DType, TensorType
from .registry import AttrSpec, OpError, defop
from .shapes import expect_int, norm_axis, same_dtype


def _reshape_infer(x: TensorType, shape):
    out: list[Dim] = []
    for i, d in enumerate(shape):
        if d == 0:
            if i >= x.rank:
                raise OpError(f"op 'reshape': 0 at position {i} but input {x} has rank {x.rank}")
            out.append(x.shape[i])
        elif d == -1 or d > 0:
            out.append(d)
        else:
            raise OpError(f"op 'reshape': bad target dim {d}")
    if out.count(-1) > 1:
        raise OpError("op 'reshape': at most one -1 allowed")
    kept = {i for i, d in enumerate(shape) if d == 0}
    rest_in = [d for i, d in enumerate(x.shape) if i not in kept]
    rest_out = [d for i, d in enumerate(out) if i not in kept and d != -1]
    if all(isinstance(d, int) for d in rest_in):
        n_in = math.prod(rest_in)
        n_out = math.prod(rest_out)
        if -1 in out:
            if n_out == 0 or n_in % n_out:
                raise OpError(f"op 'reshape': cannot reshape {x} to {list(shape)}")
            out[out.index(-1)] = n_in // n_out
        elif n_in != n_out:
            raise OpError(f"op 'reshape': cannot reshape {x} ({n_in} elements) to {list(shape)}")
    elif -1 in out:
        syms = [d for d in rest_in if isinstance(d, str)]
        static_in = math.prod(d for d in rest_in if isinstance(d, int))
        static_out = math.prod(rest_out)
        if len(syms) == 1 and static_in == static_out:
            out[out.index(-1)] = syms[0]
        else:
            out[out.index(-1)] = "?"
    return x.with_shape(out)


@defop("reshape", ("x",), attrs={"shape": AttrSpec("ints")}, infer=_reshape_infer)
def reshape(x, shape):
    """Reshape; 0 keeps the input dim at that position, -1 is inferred."""
    tgt = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(tgt)


def _transpose_infer(x: TensorType, perm):
    if sorted(perm) != list(range(x.rank)):
        raise OpError(f"op 'transpose': perm {list(perm)} is not a permutation of rank {x.rank}")
    return x.with_shape(tuple(x.shape[p] for p in perm))


@defop("transpose", ("x",), attrs={"perm": AttrSpec("ints")}, infer=_transpose_infer)
def transpose(x, perm):
    """Permute dims."""
    return np.transpose(x, perm)


def _concat_infer(*xs: TensorType, axis):
    if not xs:
        raise OpError("op 'concat' needs at least one operand")
    dt = same_dtype("concat", *xs)
    rank = xs[0].rank
    ax = norm_axis(axis, rank, "concat")
    total: Dim = 0
    for t in xs:
        if t.rank != rank:
            raise OpError(f"op 'concat': ranks differ ({xs[0]} vs {t})")
        d = t.shape[ax]
        total = total + d if isinstance(total, int) and isinstance(d, int) else "?"
    shape = list(xs[0].shape)
    shape[ax] = total
    return TensorType(dt, shape)


@defop("concat", ("xs*",), attrs={"axis": AttrSpec("int")}, infer=_concat_infer)
def concat(*xs, axis):
    """Concatenate along `axis`."""
    return np.concatenate(xs, axis=axis)


def _split_infer(x: TensorType, axis, sizes):
    ax = norm_axis(axis, x.rank, "split")
    d = x.shape[ax]
    if isinstance(d, int) and sum(sizes) != d:
        raise OpError(f"op 'split': sizes {list(sizes)} do not sum to dim {d} of {x}")
    outs = []
    for s in sizes:
        shape = list(x.shape)
        shape[ax] = s
        outs.append(x.with_shape(shape))
    return outs


@defop("split", ("x",), outputs=("outs*",), attrs={"axis": AttrSpec("int"), "sizes": AttrSpec("ints")},
       infer=_split_infer)
def split(x, axis, sizes):
    """Split along `axis` into pieces of `sizes`."""
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _slice_dim(d: Dim, start: int, end: int, step: int) -> Dim:
    if isinstance(d, int):
        return len(range(*slice(start, end, step).indices(d)))
    if start >= 0 and end >= 0 and end < 2**62 and step == 1:
        return max(end - start, 0)  # a fixed window of a symbolic dim
    if start == -1 and end >= 2**62 and step == 1:
        return 1
    return "?"


def _slice_infer(x: TensorType, axes, starts, ends, steps):
    if not (len(axes) == len(starts) == len(ends)) or (steps and len(steps) != len(axes)):
        raise OpError("op 'slice': axes, starts, ends (and steps) must have equal lengths")
    if steps and 0 in steps:
        raise OpError("op 'slice': step cannot be zero")
    shape = list(x.shape)
    for i, a in enumerate(axes):
        ax = norm_axis(a, x.rank, "slice")
        shape[ax] = _slice_dim(shape[ax], starts[i], ends[i], steps[i] if steps else 1)
    return x.with_shape(shape)


@defop("slice", ("x",),
       attrs={"axes": AttrSpec("ints"), "starts": AttrSpec("ints"), "ends": AttrSpec("ints"),
              "steps": AttrSpec("ints", ())},
       infer=_slice_infer)
def slice_(x, axes, starts, ends, steps):
    """Python-style slicing on the given axes (ends past the dim clamp)."""
    idx = [slice(None)] * x.ndim
    for i, a in enumerate(axes):
        idx[a] = slice(starts[i], ends[i], steps[i] if steps else 1)
    return x[tuple(idx)]


def _gather_infer(x: TensorType, idx: TensorType, axis):
    expect_int("gather", "indices", idx)
    ax = norm_axis(axis, x.rank, "gather")
    return x.with_shape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


@defop("gather", ("x", "indices"), attrs={"axis": AttrSpec("int", 0)}, infer=_gather_infer)
def gather(x, idx, axis):
    """Take `indices` along `axis` (numpy.take)."""
    return np.take(x, idx, axis=axis)


def _embedding_infer(ids: TensorType, w: TensorType):
    expect_int("embedding", "ids", ids)
    if w.rank != 2:
        raise OpError(f"op 'embedding': table must have rank 2, got {w}")
    return TensorType(w.dtype, ids.shape + (w.shape[1],))


@defop("embedding", ("ids", "table"), infer=_embedding_infer)
def embedding(ids, w):
    """Rows of `table` selected by integer `ids`."""
    return w[ids]


@defop("cast", ("x",), attrs={"dtype": AttrSpec("dtype")},
       infer=lambda x, dtype: x.with_dtype(dtype), traits=("pure", "elementwise"))
def cast(x, dtype):
    """Convert the element type."""
    return x.astype(dtype.np)


def _const_infer(value, shape, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    if len(value) not in (1, n):
        raise OpError(f"op 'constant': {len(value)} values for shape {list(shape)}")
    return TensorType(dtype, tuple(shape))


@defop("constant", (), attrs={"value": AttrSpec("floats"), "shape": AttrSpec("ints", ()),
                              "dtype": AttrSpec("dtype", DType.f32)}, infer=_const_infer)
def constant(value, shape, dtype):
    """A small literal tensor (one value broadcasts to the whole shape)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 1:
        return np.full(shape, arr.reshape(()), dtype=np.float64).astype(dtype.np)
    return arr.reshape(shape).astype(dtype.np)


def _arange_infer(n: TensorType | None = None, *, start, end, dtype):
    if n is not None:
        return TensorType(dtype, ("?",))
    return TensorType(dtype, (max(end - start, 0),))


@defop("arange", (), attrs={"start": AttrSpec("int", 0), "end": AttrSpec("int"),
                            "dtype": AttrSpec("dtype", DType.i64)}, infer=_arange_infer)
def arange(start, end, dtype):
    """[start, end) as a 1-D tensor."""
    return np.arange(start, end).astype(dtype.np)


def _shape_of_infer(x: TensorType, axis):
    norm_axis(axis, x.rank, "dim_size")
    return TensorType(DType.i64, ())


@defop("dim_size", ("x",), attrs={"axis": AttrSpec("int")}, infer=_shape_of_infer)
def dim_size(x, axis):
    """The size of one dim of `x`, as an i64 scalar."""
    return np.asarray(x.shape[axis], dtype=np.int64)


def _seq_index_infer(x: TensorType, axis):
    ax = norm_axis(axis, x.rank, "seq_index")
    return TensorType(DType.i64, (x.shape[ax],))


@defop("seq_index", ("x",), attrs={"axis": AttrSpec("int")}, infer=_seq_index_infer)
def seq_index(x, axis):
    """0, 1, ..., n-1 (i64[n]) where n = x.shape[axis]; the sequence index HF's causal mask
    is built from (`cache_position`). Reads only the shape of `x`, and keeps its dim symbol."""
    return np.arange(x.shape[axis], dtype=np.int64)


def _unsqueeze_infer(x: TensorType, axes):
    if len({a % (x.rank + len(axes)) for a in axes}) != len(axes):
        raise OpError(f"op 'unsqueeze': repeated axis in {list(axes)}")
    shape = list(x.shape)
    for a in sorted(norm_axis(a, x.rank + len(axes), "unsqueeze") for a in axes):
        shape.insert(a, 1)
    return x.with_shape(shape)


@defop("unsqueeze", ("x",), attrs={"axes": AttrSpec("ints")}, infer=_unsqueeze_infer)
def unsqueeze(x, axes):
    """Insert size-1 dims at `axes` (positions in the output)."""
    return np.expand_dims(x, tuple(axes))
