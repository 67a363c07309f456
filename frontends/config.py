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

from .errors import ConfigError

SUPPORTED = {
    "LlamaForCausalLM": "llama (llama2, Chinese-LLaMA-2/Alpaca-2, PaddleNLP Baichuan2 with alibi)",
    "BaichuanForCausalLM": "Baichuan2-7B (rope) / Baichuan2-13B (ALiBi)",
}


# Upper bounds on sizes: far above any real model, low enough that a typo such as
# `num_hidden_layers: 1e30` is an error instead of a hang or an out-of-memory.
MAX_SIZES = {
    "num_hidden_layers": 1024, "num_layers": 1024,
    "num_attention_heads": 4096, "num_key_value_heads": 4096,
    "hidden_size": 65536, "intermediate_size": 1_000_000, "vocab_size": 4_000_000,
    # 16M positions: above the longest context windows published (10M)
    "max_position_embeddings": 1 << 24, "model_max_length": 1 << 24,
}
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


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
    eos_token_ids: tuple[int, ...] = (2,)  # generation stops at any of them
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

    @property
    def eos_token_id(self) -> int | None:
        """The first end-of-sequence id (None if there is none); stop on `eos_token_ids`."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def to_dict(self) -> dict:
        """The fields as JSON-ready values, plus `eos_token_id` (the first of `eos_token_ids`)."""
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        d["eos_token_id"] = self.eos_token_id
        return d


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
    except RecursionError:
        raise ConfigError(f"{path}: malformed JSON: nested too deeply") from None
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


def token_ids(cfg: dict, path: Path, key: str, default: int | None) -> tuple[int, ...]:
    """A token id field: an int or a list of ints (llama-3 lists several EOS ids); null or
    an empty list mean none."""
    v = cfg.get(key, default)
    ids = [] if v is None else v if isinstance(v, list) else [v]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ConfigError(f"{path}: field '{key}' must be a token id (an integer) or a list of "
                          f"token ids, got {v!r}")
    return tuple(ids)


def _first(ids: tuple[int, ...]) -> int | None:
    return ids[0] if ids else None


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
    hidden, heads, kv = _heads(cfg, path)
    alibi = baichuan_uses_alibi(cfg) if family == "baichuan" else _flag(cfg, path, "alibi")
    if not alibi and (hidden // heads) % 2:
        raise ConfigError(f"{path}: head dim {hidden // heads} (hidden_size / num_attention_heads) "
                          "must be even for rotary embeddings")
    rope = cfg.get("rope_parameters") or {}  # transformers 5 moves theta and scaling here
    if not isinstance(rope, dict):
        raise ConfigError(f"{path}: field 'rope_parameters' must be an object or null")
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
        rope_scaling_factor=_rope_scaling_factor(cfg, rope, path),
        qkv_packed=family == "baichuan",
        norm_head=family == "baichuan" or _flag(cfg, path, "norm_head"),
        tie_word_embeddings=_flag(cfg, path, "tie_word_embeddings"),
        max_position_embeddings=_int(cfg, path, "max_position_embeddings", "model_max_length",
                                     default=4096),
        bos_token_id=_first(token_ids(cfg, path, "bos_token_id", 1)),
        eos_token_ids=token_ids(cfg, path, "eos_token_id", 2),
        pad_token_id=_first(token_ids(cfg, path, "pad_token_id", 0)),
        dtype=str(dtype),
        source_format=_source_format(cfg, family),
    )


def _heads(cfg: dict, path: Path) -> tuple[int, int, int]:
    """(hidden_size, attention heads, KV heads), checked to divide evenly."""
    hidden = _int(cfg, path, "hidden_size")
    heads = _int(cfg, path, "num_attention_heads")
    kv = _int(cfg, path, "num_key_value_heads", default=heads)
    if hidden % heads:
        raise ConfigError(f"{path}: hidden_size {hidden} is not divisible by "
                          f"num_attention_heads {heads}")
    if heads % kv:
        raise ConfigError(f"{path}: num_attention_heads {heads} is not divisible by "
                          f"num_key_value_heads {kv}")
    return hidden, heads, kv


def _flag(cfg: dict, path: Path, key: str) -> bool:
    """A boolean field (absent or null: False); a string such as "false" is an error."""
    v = cfg.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ConfigError(f"{path}: field '{key}' must be true or false, got {v!r}")
    return v


def _rope_scaling_factor(cfg: dict, rope: dict, path: Path) -> float:
    """Linear RoPE scaling factor from HF `rope_scaling`, transformers 5 `rope_parameters`
    or PaddleNLP's flat `rope_scaling_type`/`rope_scaling_factor` (1.0: no scaling)."""
    default_type = rope.get("rope_type", "default") == "default"
    scaling = cfg.get("rope_scaling") or ({} if default_type else rope)
    if not scaling and cfg.get("rope_scaling_type"):  # PaddleNLP's flat fields
        scaling = {"type": cfg["rope_scaling_type"], "factor": cfg.get("rope_scaling_factor", 1.0)}
    if not scaling:
        return 1.0
    if not isinstance(scaling, dict):
        raise ConfigError(f"{path}: field 'rope_scaling' must be an object or null")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ("linear", "default"):
        raise ConfigError(f"{path}: rope_scaling type '{kind}' is not supported (only 'linear')")
    if kind != "linear":
        return 1.0
    return _float(scaling, path, "factor", 1.0, lo=1.0, field="rope_scaling.factor")


def _source_format(cfg: dict, family: str) -> str:
    """'paddleformers', 'paddle' (PaddleNLP) or 'hf', from the version fields a save writes."""
    if "paddleformers_version" in cfg:
        return "paddleformers"
    paddle_alibi = "transformers_version" not in cfg and family == "llama" and cfg.get("alibi")
    if "paddlenlp_version" in cfg or paddle_alibi:
        return "paddle"
    return "hf"


def load_config(path: str | Path) -> ModelConfig:
    """Read a config.json file, or the config.json inside a model directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    return parse_config(read_json(p), p)
