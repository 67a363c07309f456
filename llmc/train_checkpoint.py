"""Training checkpoints: `OUT/checkpoint-STEP/`, written atomically (built in a temporary
directory beside it, then renamed in), so an interrupted save leaves the previous one whole.

A full-model checkpoint is a model directory. `save_format="hf"` (the default): the source
checkpoint's own layout and names (for an HF checkpoint: HF's): `config.json`, the tokenizer
files, `model.safetensors` with every graph parameter by its checkpoint name, so `llmc
compile` and transformers load it. `"pdparams"`: PaddleNLP's layout instead
(paddlenlp_export.py): its `config.json`, `model_state.pdparams` (paddle.save), the tokenizer
files. `"both"`: the HF directory, with the PaddleNLP one in its `paddlenlp/` subdirectory
(one directory cannot hold both config.json files). A LoRA checkpoint holds the adapter in PEFT's layout (`adapter_config.json` +
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
from typing import Callable, Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.frontends.peft import CONFIG_FILE, WEIGHTS_FILE, adapter_from_weights, check_pairs
from llmc.compiler.atomic import replace_dir
from llmc.frontends.safetensors_write import safetensors_bytes

from .paddlenlp_export import (PDPARAMS_FILE, load_pdparams, paddlenlp_config, save_pdparams,
                               to_paddlenlp)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
MODEL_FILE = "model.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
SAVE_FORMATS = ("hf", "pdparams", "both")
PADDLENLP_DIR = "paddlenlp"  # where --save-format both puts PaddleNLP's layout


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


def write_paddlenlp(d: Path, weights: Mapping[str, np.ndarray], model,
                    copy_files: list[Path]) -> None:
    """PaddleNLP's model directory in `d`: config.json, model_state.pdparams, tokenizer."""
    d.mkdir(exist_ok=True)
    state = to_paddlenlp(weights, model.config, model.naming)
    save_pdparams(d / PDPARAMS_FILE, state)
    (d / "config.json").write_text(json.dumps(paddlenlp_config(model.config, model.naming),
                                              indent=2) + "\n")
    for f in copy_files:
        shutil.copy2(f, d / f.name)


def save_checkpoint(out: Path, step: int, weights: Mapping[str, np.ndarray], optimizer: Mapping,
                    state: dict, source_dir: Path, copy_files: list[Path],
                    lora_config=None, save_format: str = "hf", model=None) -> Path:
    """Write `out/checkpoint-STEP` atomically; `lora_config` (a peft LoraConfig) saves only
    the adapter tensors among `weights`, in PEFT's layout; `save_format` pdparams or both
    (full models only) need `model`, the source Checkpoint (config and naming)."""
    arrays, rest = _split_optimizer(optimizer)
    state = {**state, "step": step, "optimizer_extra": rest}
    if save_format not in SAVE_FORMATS or (save_format != "hf" and (model is None or lora_config)):
        raise LlmcError(f"save_format '{save_format}' needs a full model (not an adapter)")

    def fill(tmp: Path) -> None:
        if lora_config is not None:
            adapter = adapter_from_weights(weights, lora_config)
            check_pairs(adapter, str(out))
            tensors = {n: np.asarray(t, dtype=np.float32) for n, t in adapter.tensors.items()}
            (tmp / WEIGHTS_FILE).write_bytes(safetensors_bytes(tensors))
            (tmp / CONFIG_FILE).write_text(json.dumps(lora_config.to_json(), indent=2,
                                                      sort_keys=True) + "\n")
        if lora_config is None and save_format in ("hf", "both"):
            tensors = {n: np.ascontiguousarray(w) for n, w in weights.items()}
            (tmp / MODEL_FILE).write_bytes(safetensors_bytes(tensors))
            shutil.copy2(source_dir / "config.json", tmp / "config.json")
            for f in copy_files:
                shutil.copy2(f, tmp / f.name)
        if save_format != "hf":
            write_paddlenlp(tmp / PADDLENLP_DIR if save_format == "both" else tmp, weights,
                            model, copy_files)
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


def load_checkpoint(path: Path, model_fingerprint: str,
                    from_pdparams: Callable[[dict], dict] | None = None) -> tuple[dict, dict, dict]:
    """(trainer_state.json, weights in the checkpoint, optimizer state) of `path`; a
    checkpoint of another model is refused. The weights come from model.safetensors, the
    PEFT adapter, or (a pdparams-only checkpoint) model_state.pdparams through
    `from_pdparams` (PaddleNLP's names and layout -> the graph's)."""
    from safetensors.numpy import load_file

    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise LlmcError(f"{path / STATE_FILE}: cannot read the training state: {e}") from None
    if state.get("fingerprint") != model_fingerprint:
        raise LlmcError(f"{path}: a checkpoint of another model or mode (fingerprint "
                        f"{state.get('fingerprint')}, this run {model_fingerprint}); "
                        "use another -o or drop --resume")
    found = [f for f in (MODEL_FILE, WEIGHTS_FILE, PDPARAMS_FILE) if (path / f).is_file()]
    if not found:
        raise LlmcError(f"{path}: no {MODEL_FILE}, {WEIGHTS_FILE} or {PDPARAMS_FILE} to resume "
                        "from")
    if found[0] == PDPARAMS_FILE:
        if from_pdparams is None:
            raise LlmcError(f"{path / PDPARAMS_FILE}: no mapping back to the graph's weights")
        weights = from_pdparams(load_pdparams(path / PDPARAMS_FILE))
    else:
        weights = load_file(str(path / found[0]))
    optimizer = {**load_file(str(path / OPTIMIZER_FILE)), **state.pop("optimizer_extra", {})}
    return state, weights, optimizer
