"""Write `.safetensors` files (any dtype the reader knows, bf16 included) and directories
atomically: readers see the old content or the whole new one, never a partial write."""

from __future__ import annotations

import json
import struct
from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError

from .entries import NUMPY_DTYPES
from .safetensors_file import ST_DTYPES

_ST_NAME = {ir: st for st, ir in ST_DTYPES.items()}
_IR_NAME = {dt: ir for ir, dt in NUMPY_DTYPES.items()}


def safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> bytes:
    """The bytes of a safetensors file holding `tensors` (C order, little endian)."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    chunks, offset = [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        ir = _IR_NAME.get(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype)
        if ir is None:
            raise LlmcError(f"tensor '{name}': dtype {a.dtype} cannot be stored in safetensors")
        data = a.astype(NUMPY_DTYPES[ir], copy=False).tobytes()
        header[name] = {"dtype": _ST_NAME[ir], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)




