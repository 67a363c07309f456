"""LoRA adapters in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Tensor names are PEFT's saved names, `base_model.model.<module>.lora_A.weight` ([r, in])
and `...lora_B.weight` ([out, r]); the update of `<module>.weight` ([out, in]) is
`scale · B @ A` with scale = lora_alpha / r (lora_alpha / √r with `use_rslora`).
What PEFT can save but llmc cannot apply (DoRA, per-module rank or alpha patterns,
fully saved modules, trained biases, regex targets) is refused with the field named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from llmc.compiler.atomic import replace_dir

from .entries import to_compute
from .errors import CheckpointError
from .safetensors_file import read_safetensors
from .safetensors_write import safetensors_bytes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class LoraConfig:
    """The fields of adapter_config.json that llmc reads and writes."""

    r: int
    lora_alpha: float
    target_modules: list[str]
    lora_dropout: float = 0.0
    base_model_name_or_path: str | None = None
    use_rslora: bool = False
    extra: dict = field(default_factory=dict)  # other fields, kept as read

    @property
    def scale(self) -> float:
        """The factor of B @ A in the weight update."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_json(self) -> dict:
        """adapter_config.json as PEFT writes it for a causal LM."""
        return {**self.extra, "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.r,
                "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": sorted(self.target_modules), "bias": "none",
                "base_model_name_or_path": self.base_model_name_or_path,
                "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
                "modules_to_save": None, "use_rslora": self.use_rslora, "use_dora": False,
                "rank_pattern": {}, "alpha_pattern": {}}


@dataclass
class Adapter:
    """A LoRA adapter: its config and its A/B matrices (float32) by PEFT name."""

    config: LoraConfig
    tensors: dict[str, np.ndarray]

    def modules(self) -> list[str]:
        """The adapted modules (`model.layers.0.self_attn.q_proj`), in file order."""
        return [n[len(PREFIX):-len(SUFFIXES[0])] for n in self.tensors if n.endswith(SUFFIXES[0])]

    def pair(self, module: str) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) of `module`."""
        a, b = (f"{PREFIX}{module}{s}" for s in SUFFIXES)
        return self.tensors[a], self.tensors[b]

    def delta(self, module: str) -> np.ndarray:
        """scale · B @ A: the [out, in] update of `module`'s weight."""
        a, b = self.pair(module)
        return (self.config.scale * (b.astype(np.float64) @ a.astype(np.float64))).astype(np.float32)


def _refuse(path: Path, key: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: field '{key}': {why}")


def _check_supported(path: Path, raw: dict) -> None:
    if raw.get("peft_type") != "LORA":
        raise _refuse(path, "peft_type", f"llmc reads LORA adapters, got {raw.get('peft_type')!r}")
    if raw.get("bias", "none") != "none":
        raise _refuse(path, "bias", "trained biases are not supported (need 'none')")
    if raw.get("use_dora"):
        raise _refuse(path, "use_dora", "DoRA adapters are not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if raw.get(key):
            raise _refuse(path, key, "per-module ranks or alphas are not supported")
    if raw.get("modules_to_save"):
        raise _refuse(path, "modules_to_save", "fully saved modules are not supported")
    if raw.get("fan_in_fan_out"):
        raise _refuse(path, "fan_in_fan_out", "Conv1D-style [in, out] layers are not supported")
    if not isinstance(raw.get("target_modules"), list):
        raise _refuse(path, "target_modules", "must be a list of module names (regex strings "
                      "are not supported)")


def read_config(adapter_dir: str | Path) -> LoraConfig:
    """adapter_config.json of `adapter_dir`, checked for what llmc can apply."""
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{adapter_dir}: no {CONFIG_FILE}: not a PEFT adapter directory") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    _check_supported(path, raw)
    try:
        r, alpha = int(raw["r"]), float(raw["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise _refuse(path, "r", "r and lora_alpha must be numbers") from None
    if r < 1:
        raise _refuse(path, "r", f"must be >= 1, got {r}")
    known = {"r", "lora_alpha", "target_modules", "lora_dropout", "base_model_name_or_path",
             "use_rslora"}
    return LoraConfig(r, alpha, list(raw["target_modules"]), float(raw.get("lora_dropout") or 0.0),
                      raw.get("base_model_name_or_path"), bool(raw.get("use_rslora")),
                      {k: v for k, v in raw.items() if k not in known})


def _canonical(name: str) -> str:
    """Old PEFT versions kept the adapter name: `lora_A.default.weight`."""
    return name.replace(".lora_A.default.weight", SUFFIXES[0]).replace(
        ".lora_B.default.weight", SUFFIXES[1])


def read_adapter(adapter_dir: str | Path) -> Adapter:
    """The adapter in `adapter_dir`, with every A/B pair checked against the config's r."""
    d = Path(adapter_dir)
    config = read_config(d)
    path = d / WEIGHTS_FILE
    if not path.is_file():
        other = " (adapter_model.bin is not read: save with safe_serialization)" if (
            d / "adapter_model.bin").exists() else ""
        raise CheckpointError(f"{d}: no {WEIGHTS_FILE}{other}")
    tensors = {}
    for name, e in read_safetensors(path).items():
        key = _canonical(name)
        if not (key.startswith(PREFIX) and key.endswith(SUFFIXES)):
            raise CheckpointError(f"{path}: tensor '{name}' is not a LoRA A/B weight")
        tensors[key] = np.asarray(to_compute(e.load(), e.dtype, "float32"), dtype=np.float32)
    adapter = Adapter(config, tensors)
    check_pairs(adapter, str(path))
    return adapter


def check_pairs(adapter: Adapter, where: str) -> None:
    """Every module has A [r, in] and B [out, r]."""
    r = adapter.config.r
    names = set(adapter.tensors)
    for module in adapter.modules():
        a_name, b_name = (f"{PREFIX}{module}{s}" for s in SUFFIXES)
        if b_name not in names:
            raise CheckpointError(f"{where}: tensor '{b_name}' is missing")
        a, b = adapter.tensors[a_name], adapter.tensors[b_name]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise CheckpointError(f"{where}: '{module}': A {list(a.shape)} and B {list(b.shape)} "
                                  f"do not have rank r={r}")
    orphans = names - {f"{PREFIX}{m}{s}" for m in adapter.modules() for s in SUFFIXES}
    if orphans:
        raise CheckpointError(f"{where}: tensor '{sorted(orphans)[0]}' has no lora_A partner")
    if not names:
        raise CheckpointError(f"{where}: the adapter holds no tensors")


def save_adapter(out_dir: str | Path, adapter: Adapter) -> Path:
    """Write `adapter` in PEFT's layout; the directory is replaced as a whole, atomically."""
    check_pairs(adapter, str(out_dir))
    tensors = {n: np.asarray(t, dtype=np.float32) for n, t in adapter.tensors.items()}
    config = json.dumps(adapter.config.to_json(), indent=2, sort_keys=True) + "\n"

    def fill(tmp: Path) -> None:
        (tmp / WEIGHTS_FILE).write_bytes(safetensors_bytes(tensors))
        (tmp / CONFIG_FILE).write_text(config)

    return replace_dir(Path(out_dir), fill)


def adapter_from_weights(weights: Mapping[str, np.ndarray], config: LoraConfig) -> Adapter:
    """The adapter tensors among a LoRA graph's weights (names ending in lora_A/B.weight)."""
    tensors = {n: np.asarray(w) for n, w in weights.items() if n.endswith(SUFFIXES)}
    return Adapter(config, tensors)
