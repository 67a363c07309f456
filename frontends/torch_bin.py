"""`pytorch_model.bin` (a pickle): read only after an explicit opt-in, tensors only.

`torch.load(weights_only=True, mmap=True)` refuses any global outside torch's tensor
allow-list; such a refusal becomes one line saying the file holds non-tensor objects
and was refused (torch's own message advises re-running with `weights_only=False`,
which is exactly what a hostile file wants).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np

from .entries import Entry, Loader, dtype_name
from .errors import CheckpointError, require

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OPCODE = re.compile(r"Unsupported operand (\d+)")


def read_torch_bin(path: Path) -> dict[str, Entry]:
    """Entries of a pytorch_model.bin: its top-level tensors (other plain values are skipped)."""
    torch = require("torch", f"{path}: reading pytorch_model.bin", "torch")
    state = _load(torch, path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    out = {}
    for name, t in state.items():
        if isinstance(t, dict) and any(isinstance(v, torch.Tensor) for v in t.values()):
            raise CheckpointError(f"{path}: the tensors are nested under key '{name}' (a "
                                  "training checkpoint?); save that inner state dict instead")
        if not isinstance(t, torch.Tensor) or not isinstance(name, str):
            continue
        dtype = "bf16" if t.dtype == torch.bfloat16 else dtype_name(
            np.dtype(str(t.dtype).removeprefix("torch.")), path, name)
        out[name] = Entry(path, dtype, tuple(t.shape), _loader(torch, t))
    if not out:
        raise CheckpointError(f"{path}: holds no tensors")
    return out


def _load(torch, path: Path):
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            return _torch_load(torch, path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {_refusal(str(e))}") from None
    except Exception as e:  # a corrupt zip or pickle raises many types
        raise CheckpointError(f"{path}: cannot read: {_first_line(e)}") from None


def _torch_load(torch, path: Path):
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:
        if "mmap can only be used" not in str(e):
            raise
    # a legacy (pre-zip, torch < 1.6) file cannot be memory-mapped: read it whole
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _refusal(message: str) -> str:
    """One line for torch's weights-only refusal (never its advice to disable the check)."""
    if (op := _OPCODE.search(message)) is not None:
        return f"not a torch checkpoint (unsupported pickle opcode {op.group(1)})"
    found = _GLOBAL.search(message)
    what = f" ({found.group(1)})" if found else ""
    return f"holds non-tensor objects{what}; refused (llmc reads only tensors from a pickle)"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _loader(torch, t) -> Loader:
    if t.dtype == torch.bfloat16:
        return lambda: t.view(torch.int16).numpy().view(np.uint16)
    return lambda: t.numpy()
