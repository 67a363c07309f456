"""Element types and tensor types (dims are ints or named symbols)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Union

import numpy as np

Dim = Union[int, str]


class DType(enum.Enum):
    """Element types. The value is the spelling in the text format."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    f64 = "f64"
    i64 = "i64"
    i32 = "i32"
    i8 = "i8"
    u8 = "u8"
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        """The numpy dtype (bf16 through ml_dtypes)."""
        if self is DType.bf16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(_NP_NAMES[self])

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.f16, DType.bf16, DType.f64)

    @classmethod
    def from_np(cls, dt) -> "DType":
        dt = np.dtype(dt)
        if dt.name == "bfloat16":
            return cls.bf16
        for k, v in _NP_NAMES.items():
            if np.dtype(v) == dt:
                return k
        raise ValueError(f"unsupported numpy dtype {dt}")

    def __repr__(self) -> str:
        return self.value


_NP_NAMES = {
    DType.f32: "float32",
    DType.f16: "float16",
    DType.f64: "float64",
    DType.i64: "int64",
    DType.i32: "int32",
    DType.i8: "int8",
    DType.u8: "uint8",
    DType.bool: "bool",
}


@dataclass(frozen=True)
class TensorType:
    """A tensor type: element dtype and a shape whose dims are ints or symbols."""

    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.value}[{', '.join(str(d) for d in self.shape)}]"


def types_compatible(a: TensorType, b: TensorType) -> bool:
    """Same dtype and rank, and no dim known to differ (symbols match anything)."""
    return (a.dtype is b.dtype and a.rank == b.rank
            and all(x == y or isinstance(x, str) or isinstance(y, str)
                    for x, y in zip(a.shape, b.shape)))
