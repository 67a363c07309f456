"""Shape helpers shared by op type inference (dims may be ints or symbols)."""

from __future__ import annotations

from ..ir import Dim, DType, TensorType
from .registry import OpError


def norm_axis(axis: int, rank: int, op: str = "") -> int:
    if not -rank <= axis < max(rank, 1):
        raise OpError(f"op '{op}': axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def broadcast_dims(a: Dim, b: Dim, op: str) -> Dim:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, str) and isinstance(b, int):
        return b
    if isinstance(b, str) and isinstance(a, int):
        return a
    if isinstance(a, str) and isinstance(b, str):
        return a
    raise OpError(f"op '{op}': cannot broadcast dims {a} and {b}")


def broadcast_shapes(op: str, *shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        d: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j >= 0:
                d = broadcast_dims(d, s[j], op)
        out.append(d)
    return tuple(out)


def same_dtype(op: str, *types: TensorType) -> DType:
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        names = ", ".join(sorted(d.value for d in dts))
        raise OpError(f"op '{op}': operand dtypes differ ({names})")
    return types[0].dtype


def elementwise(op: str):
    """Inference for an elementwise op over broadcast operands of one dtype."""

    def infer(*types: TensorType, **_):
        return TensorType(same_dtype(op, *types), broadcast_shapes(op, *(t.shape for t in types)))

    return infer


def unary(*types: TensorType, **_):
    return types[0]


def dims_equal(a: Dim, b: Dim) -> bool:
    """True unless two dims are known to differ (a symbol matches anything)."""
    return a == b or isinstance(a, str) or isinstance(b, str)


def expect_dim(op: str, what: str, got: Dim, want: Dim) -> None:
    if not dims_equal(got, want):
        raise OpError(f"op '{op}': {what} is {got}, expected {want}")


def expect_rank(op: str, what: str, t: TensorType, *ranks: int) -> None:
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise OpError(f"op '{op}': {what} must have rank {want}, got {t}")


def expect_float(op: str, t: TensorType) -> None:
    if not t.dtype.is_float:
        raise OpError(f"op '{op}': expects a float tensor, got {t}")


def expect_int(op: str, what: str, t: TensorType) -> None:
    if t.dtype not in (DType.i64, DType.i32):
        raise OpError(f"op '{op}': {what} must be i64 or i32, got {t}")


def reduce_shape(shape: tuple[Dim, ...], axes: tuple[int, ...], keepdims: bool, op: str):
    axes_n = {norm_axis(a, len(shape), op) for a in axes} if axes else set(range(len(shape)))
    out = []
    for i, d in enumerate(shape):
        if i in axes_n:
            if keepdims:
                out.append(1)
        else:
            out.append(d)
    return tuple(out)
