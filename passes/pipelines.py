"""Per-target pipelines, as data: the graph form each target compiles and its ordered passes.

- ascend910b compiles the inference form (PaddleNLP block attention) with the nine
  PaddleCustomDevice pass names in the vendor's order (backends/npu/passes/common.py),
  ending in the ATB whole-layer op `fused_blha_layer`.
- mlu370 / bi150 / cuda / cpu have per-op fused kernels, no whole-layer op; they compile
  the cache form (HF-style past/present key/value caches and a cache position: one graph
  for prefill and decode), where fuse_attention yields `cached_attention`. `--form full`
  stays available (a full-form artifact slices the last token's logits, which
  fuse_lm_head_slice moves before lm_head).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmc.compiler.errors import LlmcError

ASCEND_VENDOR_PASSES = (
    "remove_residual_in_fused_bias_residual_layernorm",
    "remove_residual_in_rms_norm",
    "remove_blha_get_max_len",
    "llama_fuse_attention_layer_begin",
    "llama_fuse_attention_layer_end",
    "llama_fuse_attention_layer",
    "llama_fuse_lm_head_with_slice",
    "llama_fuse_lm_head",
    "llama_fuse_get_padding_offset",
)
CLEANUP = ("cse", "dce")
PER_OP_NO_RESIDUAL = (
    "fuse_rms_norm{residual=false}",
    "fuse_lm_head_slice",
    "fuse_rope",
    "fuse_attention",
)
PER_OP_FULL = (
    "fuse_rms_norm",
    "fuse_lm_head_slice",
    "fuse_rope",
    "fuse_attention",
    "fuse_swiglu",
    "fuse_gate_up",
    "fuse_qkv",
)


@dataclass(frozen=True)
class Target:
    """A compilation target: what it stands for, the graph form it compiles, its passes."""

    name: str
    doc: str
    form: str  # "inference" | "cache" (| "full" by --form)
    passes: tuple[str, ...]

    @property
    def spec(self) -> str:
        return ",".join(self.passes)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "ascend910b",
            "Ascend 910B via paddle-custom-npu (ATB fused decoder layer)",
            "inference",
            ASCEND_VENDOR_PASSES + CLEANUP,
        ),
        Target(
            "mlu370",
            "Cambricon MLU370: rms_norm, rope, flash-attention kernels",
            "cache",
            PER_OP_NO_RESIDUAL + CLEANUP,
        ),
        Target(
            "bi150",
            "Iluvatar BI-V150: rms_norm, rope, flash-attention kernels",
            "cache",
            PER_OP_NO_RESIDUAL + CLEANUP,
        ),
        Target(
            "cuda",
            "NVIDIA GPU: rms_norm(+residual), rope, GQA attention, swiglu, merged qkv / gate_up",
            "cache",
            PER_OP_FULL + CLEANUP,
        ),
        Target(
            "cpu",
            "CPU (ONNX Runtime CPU kernels: SkipSimplifiedLayerNormalization, RotaryEmbedding, "
            "GroupQueryAttention / MultiHeadAttention; swiglu and merged matmuls are plain ops)",
            "cache",
            PER_OP_FULL + CLEANUP,
        ),
    )
}


def get_target(name: str) -> Target:
    """The target called `name`, or an error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise LlmcError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}") from None


def pipeline_for(target: str) -> str:
    """The pipeline spec (`a,b{opt=v},...`) of a target."""
    return get_target(target).spec
