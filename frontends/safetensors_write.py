"""Write `.safetensors` files (any dtype the reader knows, bf16 included) and directories
atomically: readers see the old content or the whole new one, never a partial write."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
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


def replace_dir(out: Path, fill) -> Path:
    """Build a directory with `fill(tmp_dir)` beside `out`, then swap it into place.

    An existing `out` is removed only after the new one is complete; an error or an
    interruption leaves `out` as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LlmcError(f"{out}: exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise LlmcError(f"{out}: cannot write: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LlmcError(f"{out}: cannot write: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
