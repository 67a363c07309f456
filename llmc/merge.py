"""Fold a LoRA adapter into a full checkpoint: W' = W + scale · B @ A.

    merge("base/", "adapter/", "merged/")    # `llmc merge BASE ADAPTER -o OUT`

The merged directory keeps the base checkpoint's own layout: the same safetensors
shards and index, tensor names and dtypes (the sum is taken in float32, then stored in
the tensor's dtype); Paddle's [in, out] Linear weights get the transposed update;
Baichuan's `W_pack` takes q/k/v adapters in its [Q | K | V] row blocks (and a `W_pack`
adapter as a whole). Every other file (config, tokenizer, generation config, remote
code) is copied. The output directory is written beside itself and swapped in whole,
and may neither be nor hold nor lie inside the base or adapter directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.frontends.loader import Checkpoint, open_checkpoint
from llmc.frontends.peft import Adapter, read_adapter
from llmc.frontends.safetensors_file import read_header
from llmc.compiler.atomic import replace_dir
from llmc.frontends.safetensors_write import safetensors_bytes
from llmc.overwrite import input_clash

PACKED = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
# other weight files of the base would hold unmerged weights next to the merged ones
NOT_COPIED = (".safetensors", ".bin", ".pdparams", ".pt", ".pth", ".h5", ".msgpack", ".ckpt",
              ".bin.index.json", ".safetensors.index.json")


@dataclass
class MergeReport:
    """What `merge` did: the output, the adapted modules and the tensors they changed."""

    out_dir: Path
    modules: list[str]
    changed: dict[str, list[str]] = field(default_factory=dict)  # tensor -> its modules
    files: list[str] = field(default_factory=list)


@dataclass
class _Update:
    """One adapter module's target tensor, the rows it covers (W_pack) and its delta."""

    tensor: str
    rows: slice | None
    delta: np.ndarray


def _candidates(module: str, ckpt: Checkpoint) -> list[str]:
    """Tensor names `module` may stand for: as named, or under the checkpoint's prefix."""
    names = [f"{module}.weight"]
    prefix = ckpt.naming.prefix
    for other in ("model.", "llama."):
        if module.startswith(other) and other != prefix:
            names.append(f"{prefix}{module[len(other):]}.weight")
    return names


def _update_for(module: str, adapter: Adapter, ckpt: Checkpoint) -> _Update:
    delta = adapter.delta(module)
    for name in _candidates(module, ckpt):
        if name in ckpt.weights:
            return _Update(name, None, delta)
        stem, _, proj = name.removesuffix(".weight").rpartition(".")
        packed = f"{stem}.W_pack.weight"
        if proj in PACKED and packed in ckpt.weights:
            h = delta.shape[0]
            return _Update(packed, slice(PACKED[proj] * h, (PACKED[proj] + 1) * h), delta)
    raise LlmcError(f"merge: adapter module '{module}' matches no weight of the base checkpoint "
                    f"(tried {', '.join(_candidates(module, ckpt))})")


def _apply(w: np.ndarray, updates: list[_Update], in_out: bool, name: str) -> np.ndarray:
    merged = np.array(w, dtype=np.float32)
    view = merged.T if in_out else merged  # the updates are [out, in]
    for u in updates:
        part = view if u.rows is None else view[u.rows]
        if part.shape != u.delta.shape:
            raise LlmcError(f"merge: tensor '{name}' {list(w.shape)} cannot take an update of "
                            f"shape {list(u.delta.shape)}")
        part += u.delta
    return merged.astype(w.dtype)


def _check_paths(base: Path, adapter: Path, out: Path) -> None:
    for d in (base, adapter):
        why = input_clash(out, dirs=[d], replaces_dir=True)
        if why is not None:
            raise LlmcError(f"merge: {why}; refusing to write there")


def _weight_files(ckpt: Checkpoint) -> list[Path]:
    files = sorted({ckpt.weights.file_of(n) for n in ckpt.weights})
    bad = [f for f in files if f.suffix != ".safetensors" or f.parent != ckpt.model_dir]
    if bad:
        raise LlmcError(f"merge: {bad[0]}: merge writes safetensors checkpoints; convert "
                        "this checkpoint to safetensors first")
    return files


def _write_shard(tmp: Path, path: Path, ckpt: Checkpoint, by_tensor: dict[str, list[_Update]]) -> None:
    header, _, _ = read_header(path)
    tensors = {}
    for name in header:
        if name == "__metadata__":
            continue
        w = ckpt.weights.raw(name)
        ups = by_tensor.get(name)
        tensors[name] = _apply(w, ups, ckpt.naming.linear_in_out, name) if ups else w
    (tmp / path.name).write_bytes(safetensors_bytes(tensors, header.get("__metadata__")))


def _copy_index(tmp: Path, base: Path) -> None:
    index = base / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, tmp / index.name)


def merge(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> MergeReport:
    """Write base + adapter, merged, as a full checkpoint in `out_dir` (see the module doc)."""
    base, adapter_path, out = Path(base_dir), Path(adapter_dir), Path(out_dir)
    _check_paths(base, adapter_path, out)
    adapter = read_adapter(adapter_path)
    ckpt = open_checkpoint(base)
    files = _weight_files(ckpt)
    report = MergeReport(out, adapter.modules())
    by_tensor: dict[str, list[_Update]] = {}
    for module in report.modules:
        u = _update_for(module, adapter, ckpt)
        by_tensor.setdefault(u.tensor, []).append(u)
        report.changed.setdefault(u.tensor, []).append(module)

    def fill(tmp: Path) -> None:
        for f in files:
            _write_shard(tmp, f, ckpt, by_tensor)
        _copy_index(tmp, base)
        for other in sorted(base.iterdir()):
            if other.name.startswith(".") or other.name.endswith(NOT_COPIED):
                continue
            if other.is_dir():
                shutil.copytree(other, tmp / other.name)
            else:
                shutil.copy2(other, tmp / other.name)
        report.files = sorted(p.name for p in tmp.iterdir())

    replace_dir(out, fill)
    return report
