"""Paddle `.pdparams` checkpoints, read lazily and safely.

A `.pdparams` file is a pickle (protocol 4) of `{name: numpy.ndarray}` written by
`paddle.save`. We read it with a restricted unpickler instead of `paddle.load`:
- safety: only numpy arrays and plain containers can be built, so a hostile
  checkpoint cannot run code (paddle.load is a full `pickle.load`);
- laziness: protocol 4 writes large byte strings outside pickle frames, so the
  unpickler records their file offset and seeks past them; tensors are later
  memory-mapped from those offsets and opening reads no tensor data (small
  tensors inside frames, a few KB each, are read with the pickle);
- no `import paddle` (seconds of startup, and not needed to read arrays).
Paddle stores bfloat16 tensors as numpy uint16; `u2` entries are reported as bf16.

Tensor-parallel shards `model_state.tp0N.pdparams` are merged with PaddleNLP's
Llama split rules (`_get_tensor_parallel_mappings`): column-parallel weights
(q/k/v/qkv, gate/up, untied lm_head) are split along the last axis (Paddle's
`[in, out]` out dim), row-parallel ones (o/down, the vocab-parallel embedding,
a tied lm_head) along axis 0; k/v only when kv heads divide by the degree, the
embedding and lm_head only when the vocab size does (else they are replicated);
`gate_up_fused_proj` is a "naive 2-fuse" ([gate_r | up_r] per rank).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .entries import Entry, dtype_name
from .errors import CheckpointError

_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("_codecs", "encode"),
}


class LazyBytes:
    """A byte range of the pickle file that was skipped instead of read."""

    __slots__ = ("offset", "size")

    def __init__(self, offset: int, size: int):
        self.offset, self.size = offset, size


class ArrayStub:
    """What `numpy._reconstruct` + `__setstate__` would build, without the data."""

    __slots__ = ("shape", "dtype", "fortran", "data")

    def __init__(self, *_args):
        self.shape: tuple[int, ...] = ()
        self.dtype = np.dtype("f4")
        self.fortran = False
        self.data: bytes | LazyBytes = b""

    def __setstate__(self, state) -> None:
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, data = state
        if not isinstance(data, (bytes, LazyBytes)):
            raise pickle.UnpicklingError("array data is not a byte string "
                                         "(object arrays are refused)")
        self.shape = tuple(int(d) for d in shape)
        self.dtype, self.fortran, self.data = np.dtype(dtype), bool(fortran), data


class _LazyUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pure-Python unpickler that allows only array-building globals and skips large payloads."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, fh):
        super().__init__(fh)
        self._fh = fh

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing global '{module}.{name}' (a tensor checkpoint "
                                         "holds only numpy arrays)")
        if name == "_reconstruct":
            return ArrayStub
        return super().find_class(module, name)

    def _bytes(self, fmt: str, n: int) -> None:
        (size,) = struct.unpack(fmt, self.read(n))
        frame = self._unframer.current_frame
        if frame is not None and frame.tell() < len(frame.getbuffer()):
            self.append(self.read(size))
            return
        offset = self._fh.tell()
        self._fh.seek(size, 1)
        self.append(LazyBytes(offset, size))

    def _binbytes(self) -> None:
        self._bytes("<I", 4)

    def _binbytes8(self) -> None:
        self._bytes("<Q", 8)

    dispatch[pickle.BINBYTES[0]] = _binbytes
    dispatch[pickle.BINBYTES8[0]] = _binbytes8


def read_pdparams(path: Path) -> dict[str, ArrayStub]:
    """The arrays of a `.pdparams` file by name, without reading large tensor data."""
    try:
        with open(path, "rb") as fh:
            obj = _LazyUnpickler(fh).load()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    except Exception as e:  # a corrupt pickle raises many types
        why = _describe(e, _last_byte(path))
        raise CheckpointError(f"{path}: corrupt or unsupported .pdparams file: {why}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: corrupt .pdparams file: expected a dict of tensors, "
                              f"got {type(obj).__name__}")
    out: dict[str, ArrayStub] = {}
    for name, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], ArrayStub):
            value = value[1]  # paddle's (tensor name, array) form
        if isinstance(value, ArrayStub) and isinstance(name, str):
            out[name] = value
    return out


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return b""
        fh.seek(-1, 2)
        return fh.read(1)


def _describe(e: Exception, last: bytes) -> str:
    if isinstance(e, pickle.UnpicklingError) and "refusing" in str(e):
        return str(e)
    if isinstance(e, EOFError) or last != pickle.STOP:
        return "the pickle ends early (truncated file?)"
    if isinstance(e, KeyError):
        return f"unknown pickle opcode {e}"
    return str(e) or type(e).__name__


def stub_loader(path: Path, stub: ArrayStub):
    """A function returning the stub's array (memory-mapped when its data was skipped)."""
    order = "F" if stub.fortran else "C"
    if isinstance(stub.data, bytes):
        data = stub.data
        return lambda: np.frombuffer(data, stub.dtype).reshape(stub.shape, order=order)

    def load() -> np.ndarray:
        if stub.data.size == 0:
            return np.empty(stub.shape, stub.dtype, order=order)
        return np.memmap(path, dtype=stub.dtype, mode="r", offset=stub.data.offset,
                         shape=stub.shape, order=order)

    return load


def stub_end(stub: ArrayStub) -> int:
    """The file offset just past the stub's data (0 for in-frame data)."""
    return stub.data.offset + stub.data.size if isinstance(stub.data, LazyBytes) else 0


_COLUMN = ("q_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_fused_proj")
_ROW = ("o_proj", "down_proj")


def tp_split_axis(name: str, shape: tuple[int, ...], tp: int, kv_heads: int, vocab: int,
                  tied: bool) -> int | None:
    """The axis PaddleNLP's Llama splits `name` along across `tp` ranks (None: replicated)."""
    if len(shape) < 2:
        return None
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        if vocab % tp:  # PaddleNLP only vocab-splits when the degree divides the vocab
            return None
        if name == "lm_head.weight" and not tied:
            return len(shape) - 1
        return 0
    if any(f".{p}." in name for p in ("k_proj", "v_proj")):
        return len(shape) - 1 if kv_heads % tp == 0 else None
    if any(f".{p}." in name for p in _COLUMN):
        return len(shape) - 1
    if any(f".{p}." in name for p in _ROW):
        return 0
    return None


def merge_tp(name: str, parts: list[np.ndarray], axis: int | None) -> np.ndarray:
    """Merge one tensor's per-rank parts (PaddleNLP's normal / naive-2-fuse merge)."""
    if axis is None:
        return parts[0]
    if ".gate_up_fused_proj." in name:
        halves = [np.split(p, 2, axis=axis) for p in parts]
        return np.concatenate([h[0] for h in halves] + [h[1] for h in halves], axis=axis)
    return np.concatenate(parts, axis=axis)


# ---------------------------------------------------------------- entries


def read_pdparams_file(path: Path) -> dict[str, Entry]:
    """Entries of one .pdparams file (Paddle's bf16 arrives as uint16 and is reported bf16)."""
    size = path.stat().st_size
    out = {}
    for name, stub in read_pdparams(path).items():
        dtype = "bf16" if stub.dtype == np.dtype("<u2") else dtype_name(stub.dtype, path, name)
        if stub_end(stub) > size:
            raise CheckpointError(f"{path}: tensor '{name}' runs past the end of the file: "
                                  "the file is truncated")
        out[name] = Entry(path, dtype, stub.shape, stub_loader(path, stub))
    return out


def merge_tp_files(files: list[Path], kv_heads: int, vocab: int, tied: bool) -> dict[str, Entry]:
    """One entry per tensor of PaddleNLP tensor-parallel shards, merged lazily."""
    ranks = [read_pdparams_file(f) for f in files]
    tp, out = len(ranks), {}
    for name, first in ranks[0].items():
        parts = []
        for f, r in zip(files, ranks):
            if name not in r:
                raise CheckpointError(f"{f}: tensor '{name}' is missing from this rank "
                                      f"(present in {files[0].name})")
            parts.append(r[name])
        axis = tp_split_axis(name, first.shape, tp, kv_heads, vocab, tied)
        out[name] = _merged_entry(name, parts, axis)
    for f, r in zip(files[1:], ranks[1:]):
        extra = sorted(set(r) - set(ranks[0]))
        if extra:
            raise CheckpointError(f"{f}: tensor '{extra[0]}' is not in {files[0].name}")
    return out


def _merged_entry(name: str, parts: list[Entry], axis: int | None) -> Entry:
    first = parts[0]
    shape = list(first.shape)
    for p in parts[1:]:
        other = [d for i, d in enumerate(p.shape) if i != axis]
        if p.dtype != first.dtype or other != [d for i, d in enumerate(shape) if i != axis]:
            raise CheckpointError(f"{p.file}: tensor '{name}' is {p.dtype}{list(p.shape)} but "
                                  f"{first.dtype}{list(first.shape)} in {first.file.name}")
    if axis is not None:
        shape[axis] = sum(p.shape[axis] for p in parts)
    loads = [p.load for p in parts]
    return Entry(first.file, first.dtype, tuple(shape),
                 lambda: merge_tp(name, [ld() for ld in loads], axis))
