"""Open a model directory: config, naming, weights and tokenizer files in one `Checkpoint`.

`open_checkpoint(dir)` reads config.json and the weight headers only (no tensor
data); a model directory without weight files is an error naming the files looked
for. A config-only checkpoint (empty, unbacked weight store) is asked for with
`config_only=True` (the CLI's `--config`), or by passing a config .json file.
`Checkpoint.validate(expected)` compares the tensors a graph needs with the
checkpoint and raises one `CheckpointError` line naming the file and tensor. A tied
checkpoint (`tie_word_embeddings`) may still store `lm_head.weight` (PaddleNLP and
older torch saves do): the graph uses the embedding, with a warning if they differ.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .config import ModelConfig, parse_config, read_json
from .entries import to_compute
from .errors import CheckpointWarning
from .naming import PADDLE, Naming, naming_for
from .weights import (FLOAT_DTYPES, WEIGHT_FILES, CheckpointError, WeightStore,
                      unread_weight_like_files)

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
    _tied_head_checked: bool = field(default=False, repr=False)

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
            return [no_weights_message(self.model_dir, self.config_path)]
        out = []
        for name, shape in expected.items():
            if (p := self.check_tensor(name, shape)) is not None:
                out.append(p)
            if progress is not None:
                progress(name)
        for name in self.weights:
            if name not in expected and not name.endswith(IGNORED_EXTRAS):
                if self._tied_head(name, expected):
                    continue
                dtype, shape = self.weights.info(name)
                out.append(f"{self.weights.file_of(name)}: unexpected tensor '{name}' "
                           f"{dtype}{list(shape)} (the {self.config.name} graph does not use it)")
        return out

    def _tied_head(self, name: str, expected: Mapping[str, tuple[int, ...]]) -> bool:
        """Whether `name` is the stored lm_head of a tied model (accepted; the graph uses the
        embedding). Warns once if it holds other values than the embedding."""
        embed = self.naming.embed()
        if not (self.config.tie_word_embeddings and name == self.naming.lm_head
                and embed in expected and embed in self.weights):
            return False
        if not self._tied_head_checked:
            self._tied_head_checked = True
            if not same_values(self.weights, name, embed):
                warnings.warn(f"{self.weights.file_of(name)}: tensor '{name}' differs from "
                              f"'{embed}', but {self.config_path.name} sets "
                              "tie_word_embeddings: the embedding is used for both",
                              CheckpointWarning, stacklevel=4)
        return True

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


def same_values(store: WeightStore, a: str, b: str, chunk_bytes: int = 64 << 20) -> bool:
    """Whether tensors `a` and `b` hold the same values (compared in float32, `b` transposed
    when only its transpose matches `a`'s shape), reading both in row chunks and stopping
    at the first difference."""
    x, y = store.raw(a), store.raw(b)
    if x.shape != y.shape:
        if x.ndim != 2 or x.shape != y.shape[::-1]:
            return False
        y = y.T
    if x.ndim == 0 or x.size == 0:
        return bool(np.array_equal(x, y))
    sx, sy = store.info(a).dtype, store.info(b).dtype
    rows = max(1, chunk_bytes // max(1, x[0].size * 4))
    for i in range(0, x.shape[0], rows):
        if not np.array_equal(to_compute(x[i:i + rows], sx, "float32"),
                              to_compute(y[i:i + rows], sy, "float32")):
            return False
    return True


def no_weights_message(model_dir: Path, config_path: Path) -> str:
    """The one-line error for a model directory without weight files."""
    others = unread_weight_like_files(model_dir)
    found = f"; found {', '.join(others[:3])}, which llmc does not read" if others else ""
    return (f"{model_dir}: no weight files (looked for {', '.join(WEIGHT_FILES)}){found}; "
            f"for a graph from the config alone, use --config {config_path}")


def _config_source(p: Path) -> tuple[Path, Path, bool]:
    """(config path, model directory, config-only by nature) of a model dir or config file."""
    if p.is_dir():
        return p / "config.json", p, False
    if p.is_file() and p.suffix == ".json":
        return p, p.parent, True
    if p.exists():
        raise CheckpointError(f"{p}: not a model directory or a config .json file")
    raise CheckpointError(f"{p}: no such model directory")


def open_checkpoint(model_dir: str | Path, allow_pickle: bool = False,
                    compute_dtype: str | None = "float32", *,
                    config_only: bool = False) -> Checkpoint:
    """Open a model directory without reading tensor data.

    `config_only=True` (or a config .json file as `model_dir`) reads only the config and
    gives an unbacked weight store; otherwise a directory without weights is an error."""
    config_path, d, config_file = _config_source(Path(model_dir))
    raw = read_json(config_path)
    cfg = parse_config(raw, config_path)
    if config_only or config_file:
        weights = WeightStore.empty(d)
    else:
        weights = WeightStore(d, allow_pickle=allow_pickle, compute_dtype=compute_dtype, config=cfg)
        if not weights.backed:
            raise CheckpointError(no_weights_message(d, config_path))
    naming = _naming(cfg, weights, raw)
    fmt = cfg.source_format
    if naming.prefix == PADDLE.prefix or fmt == "paddle":
        fmt = "paddle" if naming.prefix == PADDLE.prefix else "hf"
    if fmt != cfg.source_format:
        cfg = dataclasses.replace(cfg, source_format=fmt)
    toks = [d / f for f in TOKENIZER_FILES if (d / f).is_file()]
    return Checkpoint(d, config_path, raw, cfg, naming, weights, toks)
