"""LoRA on a checkpoint's full-form graph: add adapters, save them as PEFT does, load a
PEFT adapter (llmc's or PEFT's own) back onto the graph.

    g, weights = lora_graph(ckpt, "adapter/")          # base weights + A/B by PEFT name
    logits = full_logits(g, weights, ids)
    save_lora("out/", g, weights, ckpt_dir)            # adapter_config.json + safetensors
"""

from __future__ import annotations

from collections import ChainMap
from pathlib import Path
from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import PassContext, PassManager, make_pass
from llmc.frontends.llama import build_full
from llmc.frontends.loader import Checkpoint
from llmc.frontends.peft import (Adapter, LoraConfig, adapter_from_weights, read_adapter,
                                 save_adapter)
from llmc.passes.lora import TARGET_MODULES, init_lora_weights

# pass target key <-> the module's last name, as PEFT's target_modules lists it
MODULE_NAMES = {key: module.rsplit(".", 1)[1] for key, module in TARGET_MODULES.items()}
TARGET_KEYS = {name: key for key, name in MODULE_NAMES.items()}


def add_lora(g: Graph, targets: str | list[str] = "q,k,v,o,gate,up,down", rank: int = 8,
             alpha: float = 16.0, dropout: float = 0.0, num_layers: int | None = None) -> dict:
    """Run the lora pass on `g`; returns what it recorded (targets, rank, alpha, dropout,
    the adapted modules)."""
    spec = "+".join(targets) if isinstance(targets, list) else targets.replace(",", "+")
    p = make_pass("lora", f"targets={spec},rank={rank},alpha={float(alpha)},"
                  f"dropout={float(dropout)}")
    ctx = PassContext(model={} if num_layers is None else {"num_layers": num_layers})
    PassManager([p]).run(g, ctx)
    return ctx.model["lora"]


def lora_config(recorded: dict, base_model: str | None) -> LoraConfig:
    """The adapter_config.json of what `add_lora` recorded."""
    return LoraConfig(r=recorded["rank"], lora_alpha=recorded["alpha"],
                      target_modules=[MODULE_NAMES[k] for k in recorded["targets"]],
                      lora_dropout=recorded["dropout"], base_model_name_or_path=base_model)


def save_lora(out_dir: str | Path, recorded: dict, weights: Mapping[str, np.ndarray],
              base_model: str | None = None) -> Path:
    """Write the adapter tensors among `weights` in PEFT's layout."""
    adapter = adapter_from_weights(weights, lora_config(recorded, base_model))
    missing = [m for m in recorded["modules"] if f"base_model.model.{m}.lora_A.weight"
               not in adapter.tensors]
    if missing:
        raise LlmcError(f"save_lora: no weights for the adapter on '{missing[0]}'")
    return save_adapter(out_dir, adapter)


def _target_keys(adapter: Adapter, where: str) -> list[str]:
    keys = []
    for name in adapter.config.target_modules:
        short = name.rsplit(".", 1)[-1]
        if short not in TARGET_KEYS:
            raise LlmcError(f"{where}: target module '{name}' cannot run as a LoRA graph (known: "
                            f"{', '.join(TARGET_KEYS)}); `merge` can still fold it")
        keys.append(TARGET_KEYS[short])
    return keys


def lora_graph(ckpt: Checkpoint, adapter_dir: str | Path) -> tuple[Graph, Mapping[str, np.ndarray]]:
    """The checkpoint's full-form graph with the adapter's modules, and its weights (the
    checkpoint's plus the adapter's; layers the adapter skips get B = 0)."""
    adapter = read_adapter(adapter_dir)
    cfg = adapter.config
    g = build_full(ckpt.config, ckpt.naming)
    # the pass scales by alpha / rank: give the alpha that makes rsLoRA's scale
    add_lora(g, _target_keys(adapter, str(adapter_dir)), cfg.r, cfg.scale * cfg.r,
             cfg.lora_dropout)
    weights = init_lora_weights(g)  # B = 0: layers the adapter leaves alone stay unchanged
    for name, t in adapter.tensors.items():
        p = g.params.get(name)
        if p is None:
            raise LlmcError(f"{adapter_dir}: tensor '{name}' adapts no linear of this model")
        if tuple(p.type.shape) != t.shape:
            raise LlmcError(f"{adapter_dir}: tensor '{name}' has shape {list(t.shape)}, "
                            f"the model needs {list(p.type.shape)}")
        weights[name] = t
    return g, ChainMap(weights, ckpt.weights)
