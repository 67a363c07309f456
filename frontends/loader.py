"""Open a model directory: config, naming, weights and tokenizer files in one `Checkpoint`.

`open_checkpoint(dir)` reads config.json and the weight headers only (no tensor
data). A directory with only config.json (or a path to a config .json file)
gives a config-only checkpoint whose weight store is empty and unbacked.
`Checkpoint.validate(expected)` compares the tensors a graph needs with the
checkpoint and raises one `CheckpointError` line naming the file and tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .config import ModelConfig, parse_config, read_json
from .naming import PADDLE, Naming, naming_for
from .weights import FLOAT_DTYPES, CheckpointError, WeightStore

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "sentencepiece.bpe.model",
                   "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja", "chat_template.json", "added_tokens.json")
IGNORED_EXTRAS = ("rotary_emb.inv_freq",)  # buffers old HF llama checkpoints saved
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass
class Checkpoint:
    """A model directory opened for compiling: config, naming, lazily mapped weights."""

    model_dir: Path
    config_path: Path
    raw_config: dict
    config: ModelConfig
    naming: Naming
    weights: WeightStore
    tokenizer_files: list[Path] = field(default_factory=list)

    def validate(self, expected: Mapping[str, tuple[int, ...]],
                 progress: Callable[[str], None] | None = None) -> None:
        """Check the checkpoint holds exactly `expected` (name -> stored shape), float tensors.

        `progress(name)` is called after each expected tensor is checked."""
        problems = self.problems(expected, progress)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            err = CheckpointError(problems[0] + more)
            err.problems = problems
            raise err

    def problems(self, expected: Mapping[str, tuple[int, ...]],
                 progress: Callable[[str], None] | None = None) -> list[str]:
        """Every mismatch between `expected` and the checkpoint, one line each."""
        if not self.weights.backed:
            return [f"{self.model_dir}: no weight files (looked for model.safetensors"
                    "[.index.json], model_state[.tpNN].pdparams, pytorch_model.bin)"]
        out = []
        for name, shape in expected.items():
            if (p := self.check_tensor(name, shape)) is not None:
                out.append(p)
            if progress is not None:
                progress(name)
        for name in self.weights:
            if name not in expected and not name.endswith(IGNORED_EXTRAS):
                dtype, shape = self.weights.info(name)
                out.append(f"{self.weights.file_of(name)}: unexpected tensor '{name}' "
                           f"{dtype}{list(shape)} (the {self.config.name} graph does not use it)")
        return out

    def check_tensor(self, name: str, shape: tuple[int, ...]) -> str | None:
        """One tensor's problem (missing, wrong dtype, wrong shape), or None."""
        w = self.weights
        if name not in w:
            where = w.files[0] if len(w.files) == 1 else self.model_dir
            return f"{where}: tensor '{name}' is missing (the graph needs {list(shape)})"
        dtype, got = w.info(name)
        if dtype not in FLOAT_DTYPES:
            return (f"{w.file_of(name)}: tensor '{name}' has dtype {dtype}, "
                    "expected a float type (f32, f16, bf16)")
        if tuple(got) != tuple(shape):
            return (f"{w.file_of(name)}: tensor '{name}' has shape {list(got)}, "
                    f"expected {list(shape)} from {self.config_path.name}")
        return None

    def summary(self, expected: Mapping[str, tuple[int, ...]] | None = None) -> dict:
        """Architecture, model name, parameter count, bytes, dtypes, files and format."""
        cfg, w = self.config, self.weights
        if w.backed:
            params, nbytes, dtypes = w.num_params, w.nbytes, w.dtype_counts()
            dtype = max(dtypes, key=dtypes.get) if dtypes else cfg.dtype
        else:
            shapes = expected if expected is not None else config_param_shapes(cfg, self.naming)
            params = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
            nbytes, dtypes, dtype = params * _ITEMSIZE.get(cfg.dtype, 4), {}, cfg.dtype
        archs = self.raw_config.get("architectures") or [cfg.family]
        return {
            "architecture": str(archs[0]), "family": cfg.family, "model": cfg.name,
            "layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads, "vocab_size": cfg.vocab_size, "position": cfg.position,
            "params": params, "bytes": nbytes, "dtype": dtype, "dtypes": dtypes,
            "format": w.format, "source_format": cfg.source_format,
            "files": [str(f) for f in w.files],
            "tokenizer_files": [p.name for p in self.tokenizer_files],
        }


def config_param_shapes(cfg: ModelConfig, naming: Naming) -> dict[str, tuple[int, ...]]:
    """Stored tensor shapes implied by a config (for config-only summaries)."""
    h, inter, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads * cfg.head_dim
    lin = naming.linear_shape
    out = {naming.embed(): (cfg.vocab_size, h)}
    for i in range(cfg.num_layers):
        if naming.fused_qkv:
            out[naming.attn(i, "qkv_proj")] = lin(h + 2 * kv, h)
        elif cfg.qkv_packed:
            out[naming.attn(i, "W_pack")] = lin(h + 2 * kv, h)
        else:
            for proj, n in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
                out[naming.attn(i, proj)] = lin(n, h)
        out[naming.attn(i, "o_proj")] = lin(h, h)
        out[naming.mlp(i, "gate_proj")] = lin(inter, h)
        out[naming.mlp(i, "up_proj")] = lin(inter, h)
        out[naming.mlp(i, "down_proj")] = lin(h, inter)
        out[naming.input_norm(i)] = (h,)
        out[naming.post_norm(i)] = (h,)
    out[naming.final_norm()] = (h,)
    if not cfg.tie_word_embeddings:
        out[naming.lm_head] = lin(cfg.vocab_size, h)
    return out


def _naming(cfg: ModelConfig, weights: WeightStore, raw: dict) -> Naming:
    """Names and Linear layout from the weights (pdparams, `llama.` names, the stored shape
    of gate_proj), else from the config's source format; fused qkv as `_fused_qkv` says."""
    if not weights.backed:
        if _config_fuses_qkv(cfg, raw):  # a PaddleNLP-only field
            return dataclasses.replace(PADDLE, fused_qkv=True)
        return naming_for(cfg.source_format)
    paddle = weights.format.startswith("pdparams") or any(n.startswith(PADDLE.prefix)
                                                         for n in weights)
    base = PADDLE if paddle else naming_for("hf")
    base = dataclasses.replace(base, fused_qkv=_fused_qkv(cfg, weights, raw, base))
    gate = base.mlp(0, "gate_proj")
    if gate in weights and cfg.hidden_size != cfg.intermediate_size:
        in_out = weights.info(gate).shape == (cfg.hidden_size, cfg.intermediate_size)
        if in_out != base.linear_in_out:
            return dataclasses.replace(base, linear_in_out=in_out)
    return base


def _config_fuses_qkv(cfg: ModelConfig, raw: dict) -> bool:
    """PaddleNLP's `fuse_attention_qkv` (llama family only; Baichuan has W_pack)."""
    return cfg.family == "llama" and bool(raw.get("fuse_attention_qkv", False))


def _fused_qkv(cfg: ModelConfig, weights: WeightStore, raw: dict, base: Naming) -> bool:
    """Whether layer 0 stores one `qkv_proj`: the tensors decide, the config only when
    neither qkv_proj nor q_proj is there."""
    if cfg.family != "llama":
        return False
    if base.attn(0, "qkv_proj") in weights:
        return True
    return base.attn(0, "q_proj") not in weights and _config_fuses_qkv(cfg, raw)


def open_checkpoint(model_dir: str | Path, allow_pickle: bool = False,
                    compute_dtype: str | None = "float32") -> Checkpoint:
    """Open a model directory (or a config .json file, config-only) without reading tensor data."""
    p = Path(model_dir)
    if p.is_file() and p.suffix == ".json":
        config_path, d = p, p.parent
    else:
        if not p.is_dir():
            raise CheckpointError(f"{p}: no such model directory")
        config_path, d = p / "config.json", p
    raw = read_json(config_path)
    cfg = parse_config(raw, config_path)
    if p.is_file():
        weights = WeightStore.empty(d)
    else:
        weights = WeightStore(d, allow_pickle=allow_pickle, compute_dtype=compute_dtype, config=cfg)
    naming = _naming(cfg, weights, raw)
    fmt = cfg.source_format
    if naming.prefix == PADDLE.prefix or fmt == "paddle":
        fmt = "paddle" if naming.prefix == PADDLE.prefix else "hf"
    if fmt != cfg.source_format:
        cfg = dataclasses.replace(cfg, source_format=fmt)
    toks = [d / f for f in TOKENIZER_FILES if (d / f).is_file()]
    return Checkpoint(d, config_path, raw, cfg, naming, weights, toks)
