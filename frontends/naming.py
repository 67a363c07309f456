"""Checkpoint parameter names and layouts, per source format.

Graph parameters keep the checkpoint's own tensor names, so a weights manifest
maps each parameter straight to a tensor in a file with no renaming or copy.
Layout differences (HF Linear [out, in], Paddle Linear [in, out]) become the
`transpose_w` flag of `linear` ops instead of a transposed copy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Naming:
    """Names of a checkpoint's tensors; `linear_in_out` is True for Paddle's [in, out] layout.

    `fused_qkv` is PaddleNLP's `fuse_attention_qkv`: one `qkv_proj` per layer whose output
    features are grouped per KV head as [that group's query heads, k, v], each head_dim wide.
    """

    prefix: str = "model."  # "model." (HF) or "llama." (PaddleNLP)
    linear_in_out: bool = False
    lm_head: str = "lm_head.weight"
    fused_qkv: bool = False

    def embed(self) -> str:
        return f"{self.prefix}embed_tokens.weight"

    def layer(self, i: int, suffix: str) -> str:
        return f"{self.prefix}layers.{i}.{suffix}"

    def attn(self, i: int, proj: str) -> str:
        """proj: q_proj, k_proj, v_proj, o_proj, W_pack or qkv_proj."""
        return self.layer(i, f"self_attn.{proj}.weight")

    def mlp(self, i: int, proj: str) -> str:
        """proj: gate_proj, up_proj or down_proj."""
        return self.layer(i, f"mlp.{proj}.weight")

    def input_norm(self, i: int) -> str:
        return self.layer(i, "input_layernorm.weight")

    def post_norm(self, i: int) -> str:
        return self.layer(i, "post_attention_layernorm.weight")

    def final_norm(self) -> str:
        return f"{self.prefix}norm.weight"

    def linear_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        """The stored shape of a Linear weight in this layout."""
        return (in_features, out_features) if self.linear_in_out else (out_features, in_features)


HF = Naming()
PADDLE = Naming(prefix="llama.", linear_in_out=True)


def naming_for(source_format: str) -> Naming:
    """The naming scheme of a source format ('hf', 'paddle', 'paddleformers')."""
    return {"hf": HF, "paddle": PADDLE, "paddleformers": HF}.get(source_format, HF)
