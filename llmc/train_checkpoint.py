"""Training checkpoints: `OUT/checkpoint-STEP/`, written atomically (built in a temporary
directory beside it, then renamed in), so an interrupted save leaves the previous one whole.

A full-model checkpoint is a model directory in the source checkpoint's own layout and
names (for an HF checkpoint: HF's): `config.json`, the tokenizer files, `model.safetensors`
with every graph parameter by its checkpoint name, so `llmc compile` and transformers load
it. A LoRA checkpoint holds the adapter in PEFT's layout (`adapter_config.json` +
`adapter_model.safetensors`) instead. Both add what `--resume` needs:
`optimizer.safetensors` (AdamW moments and beta powers) and `trainer_state.json` (step,
data position, the model's fingerprint, the config).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.frontends.peft import CONFIG_FILE, WEIGHTS_FILE, adapter_from_weights, check_pairs
from llmc.compiler.atomic import replace_dir
from llmc.frontends.safetensors_write import safetensors_bytes

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
MODEL_FILE = "model.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short hash of a graph's parameter names and shapes: which model a checkpoint is of."""
    text = ";".join(f"{n}:{list(s)}" for n, s in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The finished checkpoints in `out`, oldest step first."""
    found = []
    for p in Path(out).glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _split_optimizer(opt: Mapping) -> tuple[dict, dict]:
    arrays = {k: np.asarray(v) for k, v in opt.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in opt.items() if k not in arrays}
    try:
        json.dumps(rest)
    except TypeError:
        raise LlmcError(f"optimizer state entry {sorted(rest)[0]!r} cannot be saved") from None
    return arrays, rest


def save_checkpoint(out: Path, step: int, weights: Mapping[str, np.ndarray], optimizer: Mapping,
                    state: dict, source_dir: Path, copy_files: list[Path],
                    lora_config=None) -> Path:
    """Write `out/checkpoint-STEP` atomically; `lora_config` (a peft LoraConfig) saves only
    the adapter tensors among `weights`, in PEFT's layout."""
    arrays, rest = _split_optimizer(optimizer)
    state = {**state, "step": step, "optimizer_extra": rest}

    def fill(tmp: Path) -> None:
        if lora_config is None:
            tensors = {n: np.ascontiguousarray(w) for n, w in weights.items()}
            (tmp / MODEL_FILE).write_bytes(safetensors_bytes(tensors))
            shutil.copy2(source_dir / "config.json", tmp / "config.json")
            for f in copy_files:
                shutil.copy2(f, tmp / f.name)
        else:
            adapter = adapter_from_weights(weights, lora_config)
            check_pairs(adapter, str(out))
            tensors = {n: np.asarray(t, dtype=np.float32) for n, t in adapter.tensors.items()}
            (tmp / WEIGHTS_FILE).write_bytes(safetensors_bytes(tensors))
            (tmp / CONFIG_FILE).write_text(json.dumps(lora_config.to_json(), indent=2,
                                                      sort_keys=True) + "\n")
        (tmp / OPTIMIZER_FILE).write_bytes(safetensors_bytes(arrays))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")

    return replace_dir(Path(out) / f"checkpoint-{step}", fill)


def prune(out: Path, keep: int | None) -> list[Path]:
    """Remove the oldest checkpoints beyond the newest `keep`; returns what was removed."""
    if not keep:
        return []
    old = [p for _, p in checkpoints(out)][:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def load_checkpoint(path: Path, model_fingerprint: str) -> tuple[dict, dict, dict]:
    """(trainer_state.json, weights in the checkpoint, optimizer state) of `path`; a
    checkpoint of another model is refused."""
    from safetensors.numpy import load_file

    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise LlmcError(f"{path / STATE_FILE}: cannot read the training state: {e}") from None
    if state.get("fingerprint") != model_fingerprint:
        raise LlmcError(f"{path}: a checkpoint of another model or mode (fingerprint "
                        f"{state.get('fingerprint')}, this run {model_fingerprint}); "
                        "use another -o or drop --resume")
    weights_file = path / (MODEL_FILE if (path / MODEL_FILE).is_file() else WEIGHTS_FILE)
    weights = load_file(str(weights_file))
    optimizer = {**load_file(str(path / OPTIMIZER_FILE)), **state.pop("optimizer_extra", {})}
    return state, weights, optimizer
