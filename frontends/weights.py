"""Checkpoint tensors as a read-only, lazily memory-mapped mapping.

`WeightStore(model_dir)` finds the weight files of a model directory and reads
only their headers: safetensors through frontends/safetensors_file.py (data is
mapped with numpy, never read at open), `.pdparams` through frontends/paddle_ckpt.py,
`pytorch_model.bin` through frontends/torch_bin.py and only with `allow_pickle=True`.
Names are the checkpoint's own tensor names. Shards named by an index file must
lie inside the model directory.

`store.info(name)` gives the stored dtype (IR spelling: f32, bf16, f16, i64...)
and shape without touching data; `store[name]` returns the tensor converted to
`compute_dtype` (float32 by default; a float32 tensor is returned as a zero-copy
read-only view) so the fp32 reference interpreter can run any checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from . import paddle_ckpt
from .config import load_config, read_json
from .entries import FLOAT_DTYPES, Entry, TensorInfo, to_compute
from .errors import CheckpointError
from .safetensors_file import read_safetensors
from .torch_bin import read_torch_bin

__all__ = ["FLOAT_DTYPES", "CheckpointError", "Entry", "TensorInfo", "WeightStore", "discover",
           "read_safetensors", "to_compute", "WEIGHT_FILES"]

_TP_FILE = re.compile(r"model_state\.tp(\d+)\.pdparams$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model_state.pdparams",
                "model_state.pdparams.index.json", "model_state.tpNN.pdparams",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
_WEIGHT_LIKE = (".safetensors", ".bin", ".pdparams", ".pt", ".pth", ".ckpt", ".gguf", ".npz")
_PICKLE_HINT = ("it is a pickle, which can run code when loaded: pass --allow-pickle "
                "(allow_pickle=True) if you trust it, or convert it once with "
                "`python -c \"import torch; from safetensors.torch import save_file; "
                "save_file(torch.load('pytorch_model.bin'), 'model.safetensors')\"`")

# ---------------------------------------------------------------- sharded indexes


def _read_index(index: Path, reader: Callable[[Path], dict[str, Entry]]) -> dict[str, Entry]:
    doc = read_json(index)
    wmap = doc.get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError(f"{index}: field 'weight_map' must map tensor names to file names")
    shards: dict[str, dict[str, Entry]] = {}
    out = {}
    for name, fname in wmap.items():
        if fname not in shards:
            shard = shard_path(index, name, fname)
            if not _regular(shard):
                raise CheckpointError(f"{index}: tensor '{name}' is in shard '{fname}', "
                                      "which does not exist")
            shards[fname] = reader(shard)
        if name not in shards[fname]:
            raise CheckpointError(f"{index.parent / fname}: tensor '{name}' is listed in "
                                  f"{index.name} but not stored in this shard")
        out[name] = shards[fname][name]
    return out


def shard_path(index: Path, name: str, fname: str) -> Path:
    """The shard file an index entry names, refused unless it resolves (symlinks included)
    inside the model directory. The one exception is the Hugging Face hub cache, whose
    `snapshots/REV/FILE` are symlinks to `../../blobs/HASH`: a plain entry there may
    resolve into that cache's `blobs/` folder."""
    d = index.parent
    shard = d / fname
    real, root = shard.resolve(), d.resolve()
    plain = not Path(fname).is_absolute() and ".." not in Path(fname).parts
    in_hub_cache = plain and root.parent.name == "snapshots" and real.is_relative_to(
        root.parent.parent / "blobs")
    if not (real.is_relative_to(root) or in_hub_cache):
        raise CheckpointError(f"{index}: tensor '{name}' is in shard '{fname}', which resolves "
                              f"outside the model directory {d} (refused)")
    return shard


def _tp_files(d: Path) -> list[Path]:
    found = {int(m.group(1)): p for p in d.iterdir() if (m := _TP_FILE.match(p.name))}
    for p in found.values():
        _regular(p)
    for r in range(len(found)):
        if r not in found:
            raise CheckpointError(f"{d}: tensor-parallel shard model_state.tp{r:02d}.pdparams is "
                                  f"missing (found ranks {sorted(found)})")
    return [found[r] for r in range(len(found))]


# ---------------------------------------------------------------- discovery


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
                                               paddle_ckpt.read_pdparams_file)
    if (d / "model_state.pdparams").is_file():
        return "pdparams", paddle_ckpt.read_pdparams_file(d / "model_state.pdparams")
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
    config = config if config is not None else load_config(d)
    return paddle_ckpt.merge_tp_files(files, config.num_kv_heads, config.vocab_size,
                                      config.tie_word_embeddings)


def unread_weight_like_files(d: Path) -> list[str]:
    """Names of files in `d` that look like weights but are not a format llmc reads."""
    try:
        return sorted(p.name for p in d.iterdir() if p.name.endswith(_WEIGHT_LIKE))
    except OSError:
        return []


# ---------------------------------------------------------------- the store


class WeightStore(Mapping[str, np.ndarray]):
    """Read-only mapping from checkpoint tensor name to array, memory-mapped on access.

    `path` is a model directory (or a single .safetensors / .pdparams file). A
    directory with no weight files gives an empty, unbacked store (`backed` is
    False); `frontends.loader.open_checkpoint` turns that into an error unless a
    config-only graph was asked for.
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
            self.format, self._entries = "pdparams", paddle_ckpt.read_pdparams_file(p)
            self.files = [p]
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
        """The tensor in its stored dtype (bf16 as ml_dtypes.bfloat16), memory-mapped."""
        e = self._entry(name)
        return to_compute(e.load(), e.dtype, None)

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
