"""Checkpoint tensors as a read-only, lazily memory-mapped mapping.

`WeightStore(model_dir)` finds the weight files of a model directory and reads
only their headers: safetensors headers are parsed here (data is mapped with
numpy, never read at open), `.pdparams` go through frontends/paddle_ckpt.py,
`pytorch_model.bin` through `torch.load(mmap=True, weights_only=True)` and
only with `allow_pickle=True`. Names are the checkpoint's own tensor names.

`store.info(name)` gives the stored dtype (IR spelling: f32, bf16, f16, i64...)
and shape without touching data; `store[name]` returns the tensor converted to
`compute_dtype` (float32 by default; a float32 tensor is returned as a zero-copy
read-only view) so the fp32 reference interpreter can run any checkpoint.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

import ml_dtypes
import numpy as np

from llmc.compiler.errors import LlmcError

from . import paddle_ckpt

Loader = Callable[[], np.ndarray]

_ST_DTYPES = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16", "I64": "i64", "I32": "i32",
              "I16": "i16", "I8": "i8", "U8": "u8", "U16": "u16", "U32": "u32", "U64": "u64",
              "BOOL": "bool", "F8_E4M3": "f8e4m3", "F8_E5M2": "f8e5m2"}
_NP = {"f64": "<f8", "f32": "<f4", "f16": "<f2", "bf16": "<u2", "i64": "<i8", "i32": "<i4",
       "i16": "<i2", "i8": "i1", "u8": "u1", "u16": "<u2", "u32": "<u4", "u64": "<u8",
       "bool": "?", "f8e4m3": np.dtype(ml_dtypes.float8_e4m3fn),
       "f8e5m2": np.dtype(ml_dtypes.float8_e5m2)}
_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in _NP.items()}
FLOAT_DTYPES = ("f64", "f32", "f16", "bf16", "f8e4m3", "f8e5m2")
_TP_FILE = re.compile(r"model_state\.tp(\d+)\.pdparams$")
_HEADER_LIMIT = 100 << 20


class CheckpointError(LlmcError):
    """A weight file or directory that cannot be read as a checkpoint."""


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
        return int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE.get(self.dtype, 4)


def to_compute(a: np.ndarray, stored: str, compute_dtype: str | None) -> np.ndarray:
    """Convert a stored array to the compute dtype (floats only; ints stay as stored).

    bf16 arrives as uint16 bits; fp8 (e4m3fn / e5m2) as ml_dtypes float8 arrays (a
    uint8 view of fp8 bits is reinterpreted, never converted by value)."""
    if stored == "bf16":
        a = (np.asarray(a).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif stored in ("f8e4m3", "f8e5m2"):
        a = np.asarray(a)
        if a.dtype != np.dtype(_NP[stored]):
            a = a.view(_NP[stored])
        if compute_dtype is not None:
            a = a.astype(np.float32)  # ml_dtypes decodes fp8; then to the compute dtype
    if compute_dtype is None or stored not in FLOAT_DTYPES:
        return a
    return a if a.dtype == np.dtype(compute_dtype) else a.astype(compute_dtype)


# ---------------------------------------------------------------- safetensors


class _Mapped:
    """One memory map per file, opened on first use."""

    def __init__(self, path: Path):
        self.path, self._mm = path, None

    def array(self, dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, _NP[dtype])
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        nbytes = count * _ITEMSIZE[dtype]
        return self._mm[offset:offset + nbytes].view(_NP[dtype]).reshape(shape)


def read_safetensors(path: Path) -> dict[str, Entry]:
    """Entries of one .safetensors file from its header; checks offsets against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= min(size - 8, _HEADER_LIMIT):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length); "
                                      "the file may be truncated")
            header = json.loads(fh.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    mapped, base = _Mapped(path), 8 + n
    return {name: _st_entry(path, name, meta, mapped, base, size)
            for name, meta in header.items() if name != "__metadata__"}


def _st_entry(path: Path, name: str, meta, mapped: _Mapped, base: int, size: int) -> Entry:
    try:
        dtype = _ST_DTYPES[meta["dtype"]]
        shape = tuple(int(d) for d in meta["shape"])
        begin, end = (int(x) for x in meta["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor '{name}': bad header entry {meta!r}") from None
    need = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
    if end - begin != need or begin < 0:
        raise CheckpointError(f"{path}: tensor '{name}': data offsets [{begin}, {end}) do not "
                              f"match {dtype}{list(shape)}")
    if base + end > size:
        raise CheckpointError(f"{path}: tensor '{name}' ends at byte {base + end} but the file has "
                              f"{size} bytes: the file is truncated")
    return Entry(path, dtype, shape, lambda: mapped.array(dtype, shape, base + begin))


# ---------------------------------------------------------------- pdparams


def read_pdparams_file(path: Path) -> dict[str, Entry]:
    """Entries of one .pdparams file (restricted lazy unpickler, see paddle_ckpt)."""
    size = path.stat().st_size
    out = {}
    for name, stub in paddle_ckpt.read_pdparams(path).items():
        dtype = "bf16" if stub.dtype == np.dtype("<u2") else _dtype_name(stub.dtype, path, name)
        if paddle_ckpt.stub_end(stub) > size:
            raise CheckpointError(f"{path}: tensor '{name}' runs past the end of the file: "
                                  "the file is truncated")
        out[name] = Entry(path, dtype, stub.shape, paddle_ckpt.stub_loader(path, stub))
    return out


def _dtype_name(dt: np.dtype, path: Path, name: str) -> str:
    for k, v in _NP.items():
        if k not in ("bf16", "f8e4m3", "f8e5m2") and np.dtype(v) == dt:
            return k
    raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dt}")


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
        axis = paddle_ckpt.tp_split_axis(name, first.shape, tp, kv_heads, vocab, tied)
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
                 lambda: paddle_ckpt.merge_tp(name, [ld() for ld in loads], axis))


# ---------------------------------------------------------------- pytorch_model.bin


def read_torch_bin(path: Path) -> dict[str, Entry]:
    """Entries of a pytorch_model.bin (a pickle: only called after an explicit opt-in)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch, which is not "
                              "installed; convert it to model.safetensors") from None
    try:
        sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # corrupt zip / pickle
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    out = {}
    for name, t in sd.items():
        dtype = {torch.bfloat16: "bf16"}.get(t.dtype) or _dtype_name(
            np.dtype(str(t.dtype).removeprefix("torch.")), path, name)
        out[name] = Entry(path, dtype, tuple(t.shape), _torch_loader(t))
    return out


def _torch_loader(t) -> Loader:
    import torch

    if t.dtype == torch.bfloat16:
        return lambda: t.view(torch.int16).numpy().view(np.uint16)
    return lambda: t.numpy()


# ---------------------------------------------------------------- discovery

_PICKLE_HINT = ("it is a pickle, which can run code when loaded: pass --allow-pickle "
                "(allow_pickle=True) if you trust it, or convert it once with "
                "`python -c \"import torch; from safetensors.torch import save_file; "
                "save_file(torch.load('pytorch_model.bin'), 'model.safetensors')\"`")


def _read_index(index: Path, reader: Callable[[Path], dict[str, Entry]]) -> dict[str, Entry]:
    from .config import read_json

    doc = read_json(index)
    wmap = doc.get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError(f"{index}: field 'weight_map' must map tensor names to file names")
    shards: dict[str, dict[str, Entry]] = {}
    out = {}
    for name, fname in wmap.items():
        if fname not in shards:
            shard = index.parent / fname
            if not _regular(shard):
                raise CheckpointError(f"{index}: tensor '{name}' is in shard '{fname}', "
                                      "which does not exist")
            shards[fname] = reader(shard)
        if name not in shards[fname]:
            raise CheckpointError(f"{index.parent / fname}: tensor '{name}' is listed in "
                                  f"{index.name} but not stored in this shard")
        out[name] = shards[fname][name]
    return out


def _tp_files(d: Path) -> list[Path]:
    found = {int(m.group(1)): p for p in d.iterdir() if (m := _TP_FILE.match(p.name))}
    for p in found.values():
        _regular(p)
    for r in range(len(found)):
        if r not in found:
            raise CheckpointError(f"{d}: tensor-parallel shard model_state.tp{r:02d}.pdparams is "
                                  f"missing (found ranks {sorted(found)})")
    return [found[r] for r in range(len(found))]


def discover(d: Path, allow_pickle: bool,
             config=None) -> tuple[str, dict[str, Entry], list[Path]]:
    """(format, entries, files) of the weights in model directory `d` ('none': no weights)."""
    fmt, entries = _discover(d, allow_pickle, config)
    if fmt.startswith("pdparams-tp"):
        return fmt, entries, _tp_files(d)
    files = sorted({e.file for e in entries.values()})
    return fmt, entries, files


def _regular(p: Path) -> bool:
    """Whether `p` is a regular file; a weight path that exists as anything else
    (a directory, a fifo, a dangling symlink) is an error, not 'no weights'."""
    if p.is_file():
        return True
    if p.exists() or p.is_symlink():
        what = "a directory" if p.is_dir() else "not a regular file"
        raise CheckpointError(f"{p}: is {what}; expected a weight file")
    return False


def _discover(d: Path, allow_pickle: bool, config=None) -> tuple[str, dict[str, Entry]]:
    for name in ("model.safetensors.index.json", "model.safetensors",
                 "model_state.pdparams.index.json", "model_state.pdparams",
                 "pytorch_model.bin.index.json", "pytorch_model.bin"):
        _regular(d / name)
    if (d / "model.safetensors.index.json").is_file():
        entries = _read_index(d / "model.safetensors.index.json", read_safetensors)
        return "safetensors-sharded", entries
    if (d / "model.safetensors").is_file():
        return "safetensors", read_safetensors(d / "model.safetensors")
    if (d / "model_state.pdparams.index.json").is_file():
        return "pdparams-sharded", _read_index(d / "model_state.pdparams.index.json",
                                               read_pdparams_file)
    if (d / "model_state.pdparams").is_file():
        return "pdparams", read_pdparams_file(d / "model_state.pdparams")
    tp = _tp_files(d)
    if tp:
        return f"pdparams-tp{len(tp)}", _merge_tp_dir(d, tp, config)
    for name, fmt in (("pytorch_model.bin.index.json", "pytorch-bin-sharded"),
                      ("pytorch_model.bin", "pytorch-bin")):
        if (d / name).is_file():
            if not allow_pickle:
                raise CheckpointError(f"{d / name}: refusing to load: {_PICKLE_HINT}")
            if name.endswith(".json"):
                return fmt, _read_index(d / name, read_torch_bin)
            return fmt, read_torch_bin(d / name)
    return "none", {}


def _merge_tp_dir(d: Path, files: list[Path], config) -> dict[str, Entry]:
    if config is None:
        from .config import load_config

        config = load_config(d)
    return merge_tp_files(files, config.num_kv_heads, config.vocab_size,
                          config.tie_word_embeddings)


# ---------------------------------------------------------------- the store


class WeightStore(Mapping[str, np.ndarray]):
    """Read-only mapping from checkpoint tensor name to array, memory-mapped on access.

    `path` is a model directory (or a single .safetensors / .pdparams file). A
    directory with no weight files gives an empty, unbacked store (`backed` is
    False), for compiling from config alone.
    """

    files: list[Path]

    def __init__(self, path: str | Path, *, allow_pickle: bool = False,
                 compute_dtype: str | None = "float32", config=None):
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"{p}: no such file or directory")
        if p.is_dir():
            self.format, self._entries, self.files = discover(p, allow_pickle, config)
        elif p.suffix == ".safetensors":
            self.format, self._entries, self.files = "safetensors", read_safetensors(p), [p]
        elif p.suffix == ".pdparams":
            self.format, self._entries, self.files = "pdparams", read_pdparams_file(p), [p]
        else:
            raise CheckpointError(f"{p}: unknown weight file type (expected .safetensors or "
                                  ".pdparams)")
        self.path = p
        self.compute_dtype = compute_dtype

    @classmethod
    def empty(cls, path: str | Path) -> "WeightStore":
        """An unbacked store with no tensors (compiling from a config alone)."""
        store = cls.__new__(cls)
        store.path, store.format, store._entries, store.files = Path(path), "none", {}, []
        store.compute_dtype = "float32"
        return store

    @property
    def backed(self) -> bool:
        """Whether the store has weight files behind it."""
        return self.format != "none"

    def info(self, name: str) -> TensorInfo:
        """Stored dtype and shape of `name`, without reading data."""
        e = self._entry(name)
        return TensorInfo(e.dtype, e.shape)

    def file_of(self, name: str) -> Path:
        """The file that stores `name` (rank 0 for merged tensor-parallel shards)."""
        return self._entry(name).file

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (bf16 as uint16 bits), memory-mapped."""
        return self._entry(name).load()

    def __getitem__(self, name: str) -> np.ndarray:
        e = self._entry(name)
        return to_compute(e.load(), e.dtype, self.compute_dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @property
    def nbytes(self) -> int:
        """Total stored bytes of all tensors."""
        return sum(e.nbytes for e in self._entries.values())

    @property
    def num_params(self) -> int:
        """Total number of elements of all tensors."""
        return sum(int(np.prod(e.shape, dtype=np.int64)) for e in self._entries.values())

    def dtype_counts(self) -> dict[str, int]:
        """How many tensors are stored in each dtype."""
        out: dict[str, int] = {}
        for e in self._entries.values():
            out[e.dtype] = out.get(e.dtype, 0) + 1
        return out

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None
