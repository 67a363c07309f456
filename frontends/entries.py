"""What one stored tensor is: its dtype (IR spelling), shape, file and a lazy loader.

Readers of every format (safetensors, .pdparams, pytorch_model.bin) produce `Entry`s;
`to_compute` turns a stored array into the compute dtype. bf16 and fp8 are decoded by
`ml_dtypes` (bf16 arrays are `ml_dtypes.bfloat16` views of the stored bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import ml_dtypes
import numpy as np

from .errors import CheckpointError

Loader = Callable[[], np.ndarray]

NUMPY_DTYPES = {
    "f64": np.dtype("<f8"), "f32": np.dtype("<f4"), "f16": np.dtype("<f2"),
    "bf16": np.dtype(ml_dtypes.bfloat16), "f8e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
    "f8e5m2": np.dtype(ml_dtypes.float8_e5m2), "i64": np.dtype("<i8"), "i32": np.dtype("<i4"),
    "i16": np.dtype("<i2"), "i8": np.dtype("i1"), "u8": np.dtype("u1"), "u16": np.dtype("<u2"),
    "u32": np.dtype("<u4"), "u64": np.dtype("<u8"), "bool": np.dtype("?"),
}
ITEMSIZE = {k: v.itemsize for k, v in NUMPY_DTYPES.items()}
FLOAT_DTYPES = ("f64", "f32", "f16", "bf16", "f8e4m3", "f8e5m2")
_DECODED = ("bf16", "f8e4m3", "f8e5m2")  # stored bits that ml_dtypes reinterprets


class TensorInfo(NamedTuple):
    """A tensor's stored dtype (IR spelling, e.g. 'bf16') and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives and how to map it."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    load: Loader

    @property
    def nbytes(self) -> int:
        """Stored size in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE.get(self.dtype, 4)


def as_stored(a: np.ndarray, stored: str) -> np.ndarray:
    """`a` viewed as the numpy dtype of `stored`: bf16/fp8 bits that arrive as uint16/uint8
    (Paddle's bf16, torch's bf16 through int16) are reinterpreted, never converted by value."""
    a = np.asarray(a)
    want = NUMPY_DTYPES.get(stored)
    if stored in _DECODED and a.dtype != want:
        a = a.view(want)
    return a


def to_compute(a: np.ndarray, stored: str, compute_dtype: str | None) -> np.ndarray:
    """Convert a stored array to the compute dtype (floats only; ints stay as stored).

    With `compute_dtype=None` floats keep their stored dtype (bf16 as ml_dtypes.bfloat16)."""
    a = as_stored(a, stored)
    if compute_dtype is None or stored not in FLOAT_DTYPES:
        return a
    return a if a.dtype == np.dtype(compute_dtype) else a.astype(compute_dtype)


def dtype_name(dt: np.dtype, path: Path, name: str) -> str:
    """The IR spelling of a numpy dtype read from `path`."""
    for k, v in NUMPY_DTYPES.items():
        if v == np.dtype(dt):
            return k
    raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dt}")
