"""Torch reference models for parity tests (test-only code).

* :func:`hf_logits` / :func:`hf_generate`: transformers' own Llama (fp32, eval); Baichuan
  directories (not part of transformers) are routed to the re-implementation below.
* :class:`ReferenceDecoder`: a plain torch re-implementation of the decoder family the
  fixtures cover: Llama (MHA/GQA, RoPE with optional linear scaling) and Baichuan2
  (``W_pack`` split, RoPE for 7B, ALiBi with Baichuan's interleaved slopes for 13B,
  NormHead).  :func:`baichuan_logits` and :func:`reference_logits` wrap it.
* :func:`baichuan7b_as_llama` turns a Baichuan2-7B fixture into an equivalent
  ``LlamaForCausalLM`` checkpoint, :func:`bloom_alibi_bias` exposes transformers' BLOOM
  ALiBi for cross-checking slopes.

Semantics re-implemented from Baichuan2's ``modeling_baichuan.py`` (7B and 13B):
RMSNorm with the variance in float32; ``W_pack`` output split as ``[Q | K | V]`` blocks of
``hidden_size``; 7B applies rotate-half RoPE (base 10000) and a causal mask; 13B adds, per
head, ``slope * key_position`` plus the causal ``-inf`` mask (the eval-mode ``future_mask``;
equal to ``slope * (j - i)`` up to a per-row constant, which softmax ignores) and clamps the
scores at ``finfo.min``; ``NormHead`` L2-normalises the rows of ``lm_head.weight`` before the
final matmul.  No padding masks and no KV cache: inputs are unpadded ``[batch, seq]`` ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

try:
    from frontends import fixtures
except ImportError:  # installed as the llmc package
    from llmc.frontends import fixtures

ArrayLike = np.ndarray | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


def _as_ids(input_ids: ArrayLike) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    return ids[None, :] if ids.dim() == 1 else ids


def _read_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


# --------------------------------------------------------------------------- ALiBi slopes


def baichuan_alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes as Baichuan2-13B computes them (``_get_interleave``).

    For a power of two ``n`` the slopes are ``r, r**2, ..., r**n`` with ``r = 2**(-8/n)``.
    Otherwise, with ``p`` the largest power of two below ``n``, the slopes of ``p`` heads
    are followed by every other slope of ``2p`` heads (the odd powers), ``n - p`` of them.
    """

    def geometric(n: int) -> list[float]:
        ratio = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [ratio ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return geometric(num_heads)
    lower = 2 ** math.floor(math.log2(num_heads))
    return geometric(lower) + baichuan_alibi_slopes(2 * lower)[0::2][: num_heads - lower]


def bloom_alibi_bias(num_heads: int, seq_len: int) -> np.ndarray:
    """BLOOM's ALiBi bias from transformers' ``build_alibi_tensor``: ``[num_heads, seq_len]``
    with entry ``slope_h * position``."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    alibi = build_alibi_tensor(torch.ones(1, seq_len, dtype=torch.long), num_heads, torch.float32)
    return alibi.reshape(num_heads, seq_len).numpy()


# --------------------------------------------------------------------------- reference decoder


@dataclass(frozen=True)
class DecoderSpec:
    """Hyper-parameters of :class:`ReferenceDecoder`, parsed from any fixture ``config.json``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    eps: float
    rope_theta: float
    rope_linear_factor: float
    alibi: bool
    norm_head: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "DecoderSpec":
        """Read HF Llama (4.x or 5.x style), HF Baichuan2, PaddleNLP or PaddleFormers configs."""
        params = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        scaling_type = scaling.get("rope_type", scaling.get("type")) or cfg.get("rope_scaling_type")
        factor = scaling.get("factor", cfg.get("rope_scaling_factor", 1.0))
        if scaling_type not in (None, "default", "linear"):
            raise NotImplementedError(f"rope scaling {scaling_type!r}")
        heads = cfg["num_attention_heads"]
        return cls(
            hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            eps=cfg["rms_norm_eps"],
            rope_theta=float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0),
            rope_linear_factor=float(factor) if scaling_type == "linear" else 1.0,
            alibi=fixtures.uses_alibi(cfg),
            norm_head=cfg.get("model_type") == "baichuan",
        )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ReferenceDecoder(torch.nn.Module):
    """Plain torch Llama / Baichuan2 decoder over HF-named weights (``W_pack`` or q/k/v)."""

    def __init__(self, spec: DecoderSpec, weights: dict[str, np.ndarray]):
        super().__init__()
        self.spec = spec
        self.w = {
            k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            for k, v in weights.items()
        }
        self.head_dim = spec.hidden // spec.heads

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ReferenceDecoder":
        """Load any fixture directory (HF safetensors, PaddleNLP pdparams or PaddleFormers)."""
        cfg = _read_config(model_dir)
        if any(Path(model_dir).glob("model_state*.pdparams")):
            weights = load_paddlenlp_as_hf(model_dir)
        else:
            weights = fixtures.read_safetensors_dir(model_dir)
        return cls(DecoderSpec.from_config(cfg), weights)

    def with_spec(self, **changes) -> "ReferenceDecoder":
        """The same weights under a modified :class:`DecoderSpec` (e.g. ``alibi=False``)."""
        other = ReferenceDecoder(dataclasses.replace(self.spec, **changes), {})
        other.w = self.w
        return other

    def _qkv(self, p: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if p + "self_attn.W_pack.weight" in self.w:
            q, k, v = (
                (x @ self.w[p + "self_attn.W_pack.weight"].T)
                .unflatten(-1, (3, self.spec.hidden))
                .unbind(-2)
            )
        else:
            q, k, v = (x @ self.w[f"{p}self_attn.{n}_proj.weight"].T for n in "qkv")
        b, s, _ = x.shape
        return tuple(t.reshape(b, s, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def _rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (
            self.spec.rope_theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        )
        positions = torch.arange(seq_len, dtype=torch.float32) / self.spec.rope_linear_factor
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def _bias(self, seq_len: int) -> torch.Tensor:
        causal = torch.triu(torch.full((seq_len, seq_len), float("-inf")), diagonal=1)
        if not self.spec.alibi:
            return causal[None]
        slopes = torch.tensor(baichuan_alibi_slopes(self.spec.heads), dtype=torch.float32)
        return (
            causal[None]
            + slopes[:, None, None] * torch.arange(seq_len, dtype=torch.float32)[None, None, :]
        )

    def _attention(self, p: str, x: torch.Tensor, bias: torch.Tensor, rope) -> torch.Tensor:
        q, k, v = self._qkv(p, x)
        if rope is not None:
            cos, sin = rope
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        repeat = self.spec.heads // self.spec.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        scores = torch.clamp(scores, min=torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ v
        b, _, s, _ = out.shape
        return out.transpose(1, 2).reshape(b, s, -1) @ self.w[p + "self_attn.o_proj.weight"].T

    def _mlp(self, p: str, x: torch.Tensor) -> torch.Tensor:
        gate = x @ self.w[p + "mlp.gate_proj.weight"].T
        up = x @ self.w[p + "mlp.up_proj.weight"].T
        return (F.silu(gate) * up) @ self.w[p + "mlp.down_proj.weight"].T

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` (float32) for unpadded ``input_ids``."""
        seq_len = input_ids.shape[1]
        x = self.w["model.embed_tokens.weight"][input_ids]
        bias = self._bias(seq_len)
        rope = None if self.spec.alibi else self._rope(seq_len)
        for i in range(self.spec.layers):
            p = f"model.layers.{i}."
            x = x + self._attention(
                p, _rms_norm(x, self.w[p + "input_layernorm.weight"], self.spec.eps), bias, rope
            )
            x = x + self._mlp(
                p, _rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.spec.eps)
            )
        x = _rms_norm(x, self.w["model.norm.weight"], self.spec.eps)
        head = self.w["lm_head.weight"]
        if self.spec.norm_head:
            head = F.normalize(head, dim=1)
        return x @ head.T


def greedy_generate(
    forward, ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None, pad_token_id: int = 0
) -> np.ndarray:
    """HF-style greedy loop: rows that emitted EOS continue with ``pad_token_id``."""
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        next_ids = forward(ids)[:, -1].argmax(-1)
        next_ids = torch.where(unfinished, next_ids, torch.full_like(next_ids, pad_token_id))
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        if eos_token_id is not None:
            unfinished &= next_ids != eos_token_id
            if not unfinished.any():
                break
    return ids.numpy()


def reference_logits(model_dir: str | Path, input_ids: ArrayLike) -> np.ndarray:
    """Logits of any fixture directory computed by :class:`ReferenceDecoder`."""
    return ReferenceDecoder.from_dir(model_dir)(_as_ids(input_ids)).numpy()


def baichuan_logits(model_dir: str | Path, input_ids: ArrayLike) -> np.ndarray:
    """Logits of an HF Baichuan2 (7B RoPE or 13B ALiBi) checkpoint directory."""
    if _read_config(model_dir).get("model_type") != "baichuan":
        raise ValueError(f"{model_dir} is not a Baichuan checkpoint")
    return reference_logits(model_dir, input_ids)


def baichuan_generate(
    model_dir: str | Path, input_ids: ArrayLike, max_new_tokens: int = 32, stop_at_eos: bool = True
) -> np.ndarray:
    """Greedy generation with the Baichuan reference (full recompute per step)."""
    model = ReferenceDecoder.from_dir(model_dir)
    eos = _read_config(model_dir).get("eos_token_id") if stop_at_eos else None
    return greedy_generate(model, _as_ids(input_ids), max_new_tokens, eos)


# --------------------------------------------------------------------------- transformers


def _is_baichuan(model_dir: str | Path) -> bool:
    cfg = _read_config(model_dir)
    return cfg.get("model_type") == "baichuan" or fixtures.uses_alibi(cfg)


def load_hf_model(model_dir: str | Path):
    """transformers ``AutoModelForCausalLM`` in float32 eval mode (Llama checkpoints only)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def hf_logits(model_dir: str | Path, input_ids: ArrayLike) -> np.ndarray:
    """Logits ``[batch, seq, vocab]`` from transformers (Baichuan: :func:`baichuan_logits`)."""
    if _is_baichuan(model_dir):
        return reference_logits(model_dir, input_ids)
    with torch.no_grad():
        return load_hf_model(model_dir)(_as_ids(input_ids)).logits.float().numpy()


def hf_generate(
    model_dir: str | Path, input_ids: ArrayLike, max_new_tokens: int = 32, stop_at_eos: bool = True
) -> np.ndarray:
    """Greedy ``generate`` (KV cache) returning prompt + new ids, ``[batch, total]`` int64.

    With ``stop_at_eos`` generation ends once every row emitted ``eos_token_id`` (HF
    semantics; finished rows are padded with ``pad_token_id``); otherwise exactly
    ``max_new_tokens`` tokens are produced.
    """
    if _is_baichuan(model_dir):
        return baichuan_generate(model_dir, input_ids, max_new_tokens, stop_at_eos)
    from transformers import GenerationConfig

    model = load_hf_model(model_dir)
    if not stop_at_eos:
        model.config.eos_token_id = model.generation_config.eos_token_id = None
    ids = _as_ids(input_ids)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    return out.numpy()


# --------------------------------------------------------------------------- conversions


def load_paddlenlp_as_hf(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Read a PaddleNLP fixture (single, TP-sharded and/or fused qkv) back into HF Llama naming."""
    import paddle

    model_dir = Path(model_dir)
    cfg = _read_config(model_dir)
    files = sorted(model_dir.glob("model_state.tp*.pdparams")) or [
        model_dir / "model_state.pdparams"
    ]
    shards = [paddle.load(str(f), return_numpy=True) for f in files]
    state = merge_paddlenlp_tp(shards, cfg) if len(shards) > 1 else shards[0]
    state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if cfg.get("fuse_attention_qkv"):
        state = unfuse_paddlenlp_qkv(state, cfg)
    out = {}
    for name, w in state.items():
        hf_name = "model." + name[len("llama.") :] if name.startswith("llama.") else name
        transpose = w.ndim == 2 and not name.endswith("embed_tokens.weight")
        out[hf_name] = np.ascontiguousarray(w.T) if transpose else w
    return out


def merge_paddlenlp_tp(shards: list[dict], cfg: dict) -> dict[str, np.ndarray]:
    """Concatenate PaddleNLP TP rank state dicts: column-parallel on the last axis, row-parallel
    (o/down proj, embedding) on axis 0, replicated tensors taken from rank 0."""
    tp = len(shards)
    vocab_ok = cfg["vocab_size"] % tp == 0
    kv_ok = (cfg.get("num_key_value_heads") or cfg["num_attention_heads"]) % tp == 0
    merged = {}
    for name, w0 in shards[0].items():
        if not isinstance(w0, np.ndarray):
            continue
        if (name.endswith("embed_tokens.weight") and vocab_ok) or any(
            s in name for s in (".o_proj.", ".down_proj.")
        ):
            axis = 0
        elif (
            (name == "lm_head.weight" and vocab_ok)
            or any(s in name for s in (".q_proj.", ".qkv_proj.", ".gate_proj.", ".up_proj."))
            or (kv_ok and any(s in name for s in (".k_proj.", ".v_proj.")))
        ):
            axis = 1
        else:
            merged[name] = w0
            continue
        merged[name] = np.concatenate([s[name] for s in shards], axis=axis)
    return merged


def unfuse_paddlenlp_qkv(state: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """Split PaddleNLP ``qkv_proj`` (per KV head: query heads of the group, k, v) into q/k/v."""
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    group = heads // kv_heads
    out = {}
    for name, w in state.items():
        if not name.endswith("qkv_proj.weight"):
            out[name] = w
            continue
        blocks = np.split(w, heads + 2 * kv_heads, axis=1)
        q, k, v = [], [], []
        for g in range(kv_heads):
            chunk = blocks[g * (group + 2) : (g + 1) * (group + 2)]
            q += chunk[:group]
            k.append(chunk[group])
            v.append(chunk[group + 1])
        prefix = name[: -len("qkv_proj.weight")]
        for proj, parts in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            out[f"{prefix}{proj}.weight"] = np.concatenate(parts, axis=1)
    return out


def baichuan7b_as_llama(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a Baichuan2-7B checkpoint to an equivalent HF ``LlamaForCausalLM`` checkpoint
    (``W_pack`` split into q/k/v, ``lm_head`` rows L2-normalised, RoPE theta 1e4)."""
    cfg = _read_config(model_dir)
    if fixtures.uses_alibi(cfg):
        raise ValueError("ALiBi Baichuan (13B) has no Llama equivalent")
    h = cfg["hidden_size"]
    llama = fixtures.baichuan_to_llama_weights(fixtures.read_safetensors_dir(model_dir), h)
    out = Path(out_dir)
    fixtures.write_safetensors(out, llama, metadata={"format": "pt"})
    llama_cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_attention_heads"],
        "hidden_act": cfg.get("hidden_act", "silu"),
        "max_position_embeddings": cfg.get("max_position_embeddings", cfg.get("model_max_length")),
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "vocab_size": cfg["vocab_size"],
        "torch_dtype": "float32",
        "bos_token_id": cfg.get("bos_token_id", 1),
        "eos_token_id": cfg.get("eos_token_id", 2),
        "pad_token_id": cfg.get("pad_token_id", 0),
    }
    (out / "config.json").write_text(json.dumps(llama_cfg, indent=2) + "\n")
    return out
