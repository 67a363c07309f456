"""Model configs: read config.json (HF, PaddleNLP, PaddleFormers) into one ModelConfig.

Detection, in order: `architectures` / `model_type`, then fields. Baichuan2
arrives as `BaichuanForCausalLM` (model_type baichuan; ALiBi for 13B, rope for
7B) or as PaddleNLP's converted `LlamaForCausalLM` with `"alibi": true`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from llmc.compiler.errors import LlmcError

SUPPORTED = {
    "LlamaForCausalLM": "llama (llama2, Chinese-LLaMA-2/Alpaca-2, PaddleNLP Baichuan2 with alibi)",
    "BaichuanForCausalLM": "Baichuan2-7B (rope) / Baichuan2-13B (ALiBi)",
}


class ConfigError(LlmcError):
    """A config.json that cannot describe a supported model."""


# Upper bounds on sizes: far above any real model, low enough that a typo such as
# `num_hidden_layers: 1e30` is an error instead of a hang or an out-of-memory.
MAX_SIZES = {
    "num_hidden_layers": 1024, "num_layers": 1024,
    "num_attention_heads": 4096, "num_key_value_heads": 4096,
    "hidden_size": 65536, "intermediate_size": 1_000_000, "vocab_size": 4_000_000,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything the graph builders need to know about a model."""

    family: str  # "llama" | "baichuan"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    position: str = "rope"  # "rope" | "alibi"
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0  # linear position interpolation
    qkv_packed: bool = False  # Baichuan W_pack = [Q|K|V] rows
    norm_head: bool = False  # Baichuan2 NormHead: lm_head rows L2-normalised
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    dtype: str = "float32"
    source_format: str = "hf"  # "hf" | "paddle" | "paddleformers"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def name(self) -> str:
        if self.family == "baichuan" or (self.position == "alibi"):
            return "baichuan2-13b" if self.position == "alibi" else "baichuan2-7b"
        if self.vocab_size == 55296:
            return "chinese-llama-2"
        return "llama2" if self.num_kv_heads == self.num_heads else "llama2-gqa"

    def to_dict(self) -> dict:
        return asdict(self)


def read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (a model directory needs config.json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _int(cfg: dict, path: Path, *keys: str, default=None) -> int:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            v = cfg[k]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{path}: field '{k}' must be a positive integer, got {v!r}")
            if k in MAX_SIZES and v > MAX_SIZES[k]:
                raise ConfigError(f"{path}: field '{k}' is {v}, above the supported maximum "
                                  f"{MAX_SIZES[k]}")
            return v
    if default is not None:
        return default
    raise ConfigError(f"{path}: missing field '{keys[0]}'")


def _float(cfg: dict, path: Path, key: str, default: float, *, lo: float | None = None,
           min_open: bool = False, field: str | None = None) -> float:
    """A finite number field; `lo` bounds it below (strictly when `min_open`)."""
    name = field or key
    v = cfg.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path}: field '{name}' must be a number, got {v!r}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ConfigError(f"{path}: field '{name}' must be a finite number, got {v!r}")
    if lo is not None and (f <= lo if min_open else f < lo):
        op = ">" if min_open else ">="
        raise ConfigError(f"{path}: field '{name}' must be {op} {lo:g}, got {v!r}")
    return f


def detect_family(cfg: dict, path: Path) -> str:
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list):
        raise ConfigError(f"{path}: field 'architectures' must be a list")
    mt = cfg.get("model_type", "")
    if not all(isinstance(a, str) for a in archs):
        raise ConfigError(f"{path}: field 'architectures' must be a list of class names")
    if archs:  # the class to instantiate decides; model_type only when it is absent
        unsupported = [a for a in archs if a not in SUPPORTED]
        if not unsupported:
            return "baichuan" if "BaichuanForCausalLM" in archs or mt == "baichuan" else "llama"
        got = ", ".join(unsupported)
    elif mt == "baichuan":
        return "baichuan"
    elif mt == "llama" or not mt:
        return "llama"
    else:
        got = str(mt)
    supported = "; ".join(f"{k}: {v}" for k, v in SUPPORTED.items())
    raise ConfigError(f"{path}: unsupported architecture '{got}'. Supported: {supported}")


def baichuan_uses_alibi(cfg: dict) -> bool:
    """Baichuan2-13B uses ALiBi, 7B rope. HF configs do not say so directly: 7B
    configs carry `max_position_embeddings`, 13B configs only `model_max_length`
    (and 13B is 5120 wide / 40 layers). An explicit `alibi` field wins."""
    if "alibi" in cfg:
        return bool(cfg["alibi"])
    if "max_position_embeddings" in cfg:
        return False
    return "model_max_length" in cfg or cfg.get("hidden_size") == 5120


def parse_config(cfg: dict, path: Path = Path("config.json")) -> ModelConfig:
    """Build a ModelConfig from a config.json dict, with errors naming the file and field."""
    family = detect_family(cfg, path)
    hidden = _int(cfg, path, "hidden_size")
    heads = _int(cfg, path, "num_attention_heads")
    kv = _int(cfg, path, "num_key_value_heads", default=heads)
    if hidden % heads:
        raise ConfigError(f"{path}: hidden_size {hidden} is not divisible by "
                          f"num_attention_heads {heads}")
    if heads % kv:
        raise ConfigError(f"{path}: num_attention_heads {heads} is not divisible by "
                          f"num_key_value_heads {kv}")
    alibi = baichuan_uses_alibi(cfg) if family == "baichuan" else bool(cfg.get("alibi", False))
    if not alibi and (hidden // heads) % 2:
        raise ConfigError(f"{path}: head dim {hidden // heads} (hidden_size / num_attention_heads) "
                          "must be even for rotary embeddings")
    rope = cfg.get("rope_parameters") or {}  # transformers 5 moves theta and scaling here
    if not isinstance(rope, dict):
        raise ConfigError(f"{path}: field 'rope_parameters' must be an object or null")
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else {})
    if not scaling and cfg.get("rope_scaling_type"):  # PaddleNLP's flat fields
        scaling = {"type": cfg["rope_scaling_type"], "factor": cfg.get("rope_scaling_factor", 1.0)}
    factor = 1.0
    if scaling:
        if not isinstance(scaling, dict):
            raise ConfigError(f"{path}: field 'rope_scaling' must be an object or null")
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("linear", "default"):
            raise ConfigError(f"{path}: rope_scaling type '{kind}' is not supported (only 'linear')")
        factor = (_float(scaling, path, "factor", 1.0, lo=1.0, field="rope_scaling.factor")
                  if kind == "linear" else 1.0)
    if "paddleformers_version" in cfg:
        fmt = "paddleformers"
    elif "paddlenlp_version" in cfg or "transformers_version" not in cfg and family == "llama" and cfg.get("alibi"):
        fmt = "paddle"
    else:
        fmt = "hf"
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return ModelConfig(
        family=family,
        hidden_size=hidden,
        num_layers=_int(cfg, path, "num_hidden_layers", "num_layers"),
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=_int(cfg, path, "intermediate_size"),
        vocab_size=_int(cfg, path, "vocab_size"),
        rms_norm_eps=_float(cfg, path, "rms_norm_eps", 1e-6, lo=0.0),
        position="alibi" if alibi else "rope",
        rope_theta=_float(cfg, path, "rope_theta",
                          _float(rope, path, "rope_theta", 10000.0, lo=0.0, min_open=True,
                                 field="rope_parameters.rope_theta"),
                          lo=0.0, min_open=True),
        rope_scaling_factor=factor,
        qkv_packed=family == "baichuan",
        norm_head=family == "baichuan" or bool(cfg.get("norm_head", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=_int(cfg, path, "max_position_embeddings", "model_max_length",
                                     default=4096),
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 0),
        dtype=str(dtype),
        source_format=fmt,
    )


def load_config(path: str | Path) -> ModelConfig:
    """Read a config.json file, or the config.json inside a model directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    return parse_config(read_json(p), p)
