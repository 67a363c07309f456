"""Torch reference models for parity tests (test-only code).

* :func:`hf_logits` / :func:`hf_generate`: transformers' own Llama (fp32, eval); Baichuan
  directories (not part of transformers) are routed to the re-implementation below.
* :class:`ReferenceDecoder`: a plain torch re-implementation of the decoder family the
  fixtures cover: Llama (MHA/GQA, RoPE with optional linear scaling) and Baichuan2
  (``W_pack`` split, RoPE for 7B, ALiBi with Baichuan's interleaved slopes for 13B,
  NormHead).  :func:`baichuan_logits` and :func:`reference_logits` wrap it.
* :func:`baichuan7b_as_llama` (in reference_conversions.py) turns a Baichuan2-7B fixture into an equivalent
  ``LlamaForCausalLM`` checkpoint, :func:`bloom_alibi_bias` exposes transformers' BLOOM
  ALiBi for cross-checking slopes.

Which position scheme a Baichuan checkpoint uses is taken from the fixture's architecture
(``arch``, e.g. ``"baichuan2_13b"``), never decided from its config: the product reads that
from the config, and a shared rule would let a wrong decision pass both sides.

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

from reference_conversions import (  # noqa: F401  (re-exported for the tests)
    baichuan7b_as_llama,
    load_paddlenlp_as_hf,
    merge_paddlenlp_tp,
    unfuse_paddlenlp_qkv,
)

# Baichuan2-13B's modeling_baichuan.py adds ALiBi biases; every other architecture the
# fixtures write (Llama variants, Baichuan2-7B) uses RoPE.
ALIBI_ARCHES = ("baichuan2_13b",)
BAICHUAN_ARCHES = ("baichuan2_7b", "baichuan2_13b")

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
    def from_config(cls, cfg: dict, arch: str | None = None) -> "DecoderSpec":
        """Read HF Llama (4.x or 5.x style), HF Baichuan2, PaddleNLP or PaddleFormers configs;
        ALiBi or RoPE comes from ``arch`` (required for a Baichuan config)."""
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
            alibi=_alibi_from_arch(cfg, arch),
            norm_head=cfg.get("model_type") == "baichuan",
        )


def _looks_baichuan(cfg: dict) -> bool:
    return cfg.get("model_type") == "baichuan" or "alibi" in cfg


def _alibi_from_arch(cfg: dict, arch: str | None) -> bool:
    if arch is None:
        if _looks_baichuan(cfg):
            raise ValueError("a Baichuan checkpoint: pass arch= (the fixture's architecture), "
                             "which decides ALiBi or RoPE for the reference")
        return False
    if arch not in fixtures.ARCHES:
        raise ValueError(f"unknown fixture architecture {arch!r}")
    return arch in ALIBI_ARCHES


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
    def from_dir(cls, model_dir: str | Path, arch: str | None = None) -> "ReferenceDecoder":
        """Load any fixture directory (HF safetensors, PaddleNLP pdparams or PaddleFormers);
        ``arch`` is the fixture's architecture (required for Baichuan directories)."""
        cfg = _read_config(model_dir)
        if any(Path(model_dir).glob("model_state*.pdparams")):
            weights = load_paddlenlp_as_hf(model_dir)
        else:
            weights = fixtures.read_safetensors_dir(model_dir)
        return cls(DecoderSpec.from_config(cfg, arch), weights)

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


def reference_logits(
    model_dir: str | Path, input_ids: ArrayLike, arch: str | None = None
) -> np.ndarray:
    """Logits of any fixture directory computed by :class:`ReferenceDecoder`."""
    return ReferenceDecoder.from_dir(model_dir, arch)(_as_ids(input_ids)).numpy()


def baichuan_logits(model_dir: str | Path, input_ids: ArrayLike, arch: str) -> np.ndarray:
    """Logits of an HF Baichuan2 checkpoint directory of fixture architecture ``arch``
    (``baichuan2_7b``: RoPE, ``baichuan2_13b``: ALiBi)."""
    if _read_config(model_dir).get("model_type") != "baichuan" or arch not in BAICHUAN_ARCHES:
        raise ValueError(f"{model_dir} ({arch}) is not a Baichuan checkpoint")
    return reference_logits(model_dir, input_ids, arch)


def baichuan_generate(
    model_dir: str | Path,
    input_ids: ArrayLike,
    max_new_tokens: int = 32,
    stop_at_eos: bool = True,
    arch: str | None = None,
) -> np.ndarray:
    """Greedy generation with the Baichuan reference (full recompute per step)."""
    model = ReferenceDecoder.from_dir(model_dir, arch)
    eos = _read_config(model_dir).get("eos_token_id") if stop_at_eos else None
    return greedy_generate(model, _as_ids(input_ids), max_new_tokens, eos)


# --------------------------------------------------------------------------- transformers


def _is_baichuan(model_dir: str | Path, arch: str | None) -> bool:
    return arch in BAICHUAN_ARCHES or _looks_baichuan(_read_config(model_dir))


def load_hf_model(model_dir: str | Path):
    """transformers ``AutoModelForCausalLM`` in float32 eval mode (Llama checkpoints only)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def hf_logits(
    model_dir: str | Path, input_ids: ArrayLike, arch: str | None = None
) -> np.ndarray:
    """Logits ``[batch, seq, vocab]`` from transformers; Baichuan directories (``arch`` is
    required for them) go to :class:`ReferenceDecoder`, as transformers has no Baichuan."""
    if _is_baichuan(model_dir, arch):
        return reference_logits(model_dir, input_ids, arch)
    with torch.no_grad():
        return load_hf_model(model_dir)(_as_ids(input_ids)).logits.float().numpy()


def hf_generate(
    model_dir: str | Path,
    input_ids: ArrayLike,
    max_new_tokens: int = 32,
    stop_at_eos: bool = True,
    arch: str | None = None,
) -> np.ndarray:
    """Greedy ``generate`` (KV cache) returning prompt + new ids, ``[batch, total]`` int64.

    With ``stop_at_eos`` generation ends once every row emitted ``eos_token_id`` (HF
    semantics; finished rows are padded with ``pad_token_id``); otherwise exactly
    ``max_new_tokens`` tokens are produced.
    """
    if _is_baichuan(model_dir, arch):
        return baichuan_generate(model_dir, input_ids, max_new_tokens, stop_at_eos, arch)
    from transformers import GenerationConfig

    model = load_hf_model(model_dir)
    if not stop_at_eos:
        model.config.eos_token_id = model.generation_config.eos_token_id = None
    ids = _as_ids(input_ids)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    return out.numpy()
