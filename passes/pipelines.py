"""Per-target pipelines, as data: the graph form each target compiles and its ordered passes.

- ascend910b compiles the inference form (PaddleNLP block attention) with the nine
  PaddleCustomDevice pass names in the vendor's order (backends/npu/passes/common.py),
  ending in the ATB whole-layer op `fused_blha_layer`.
- mlu370 / bi150 / cuda / cpu have per-op fused kernels, no whole-layer op; they compile
  the cache form (HF-style past/present key/value caches and a cache position: one graph
  for prefill and decode), where fuse_attention yields `cached_attention`. `--form full`
  stays available (a full-form artifact slices the last token's logits, which
  fuse_lm_head_slice moves before lm_head).

Tensor parallel (`pipeline_for(target, tp=N, ...)`, tp > 1): `shard_tensor_parallel{tp=N}`
runs first, on the frontend's unfused graph, then the target's fusions, then `fuse_mc2`
(linear + collective → one MC2 op) where it is on, then cse, dce. fuse_mc2 is on by
default for ascend910b (its MC2 kernels) and on the other targets by `mc2=True` (`--mc2`;
the GPU analog is PyTorch's async-TP). It runs after the target's fusions: none of them
consumes a row-parallel linear's partial sums, so it still finds 2 per layer, and with
sequence parallelism a gathered input meets one merged linear (fuse_qkv and fuse_gate_up
merge the weight slices of sibling linears), which all_gather_matmul takes.

A target's `tp_drops` are left out when tp > 1 because they cannot match a sharded graph
(they would only print "matched 0 (expected N)" warnings). Only ascend910b has any: the
whole-layer fusions llama_fuse_attention_layer{_begin,_end,} (the ATB layer op has no
collective inside; with every o_proj / down_proj followed by an all_reduce the layer pattern
is broken) and llama_fuse_lm_head{_with_slice,} (the logits are the all_gather of a
vocabulary-parallel linear, not the linear itself). A tp > 1 ascend910b graph keeps per-op
kernels: rms_norm, block attention, matmul_all_reduce. The per-op targets keep every fusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
ASCEND_WHOLE_LAYER = ("llama_fuse_attention_layer_begin", "llama_fuse_attention_layer_end",
                      "llama_fuse_attention_layer")
ASCEND_LM_HEAD = ("llama_fuse_lm_head_with_slice", "llama_fuse_lm_head")
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
    mc2: bool = False  # fuse_mc2 by default when tp > 1
    tp_drops: tuple[str, ...] = field(default=())  # passes left out when tp > 1

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
            mc2=True,
            tp_drops=ASCEND_WHOLE_LAYER + ASCEND_LM_HEAD,
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


@dataclass(frozen=True)
class Parallel:
    """How a compile splits the model: `tp` tensor-parallel ranks, sequence parallelism,
    and fuse_mc2 (None: the target's default)."""

    tp: int = 1
    sequence_parallel: bool = False
    mc2: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise LlmcError(f"--tp must be a positive integer, got {self.tp!r}")
        if self.tp == 1 and self.sequence_parallel:
            raise LlmcError("--sequence-parallel needs --tp greater than 1")
        if self.tp == 1 and self.mc2:
            raise LlmcError("--mc2 needs --tp greater than 1 (it fuses a matmul with the "
                            "collective of a tensor-parallel graph)")

    @property
    def shard_spec(self) -> str:
        """The sharding pass as a pipeline element."""
        sp = ",sequence_parallel=true" if self.sequence_parallel else ""
        return f"shard_tensor_parallel{{tp={self.tp}{sp}}}"


def passes_for(target: str, parallel: Parallel = Parallel()) -> tuple[str, ...]:
    """The ordered pipeline elements of `target` compiled with `parallel`."""
    t = get_target(target)
    if parallel.tp == 1:
        return t.passes
    fusions = tuple(p for p in t.passes if p not in t.tp_drops and p not in CLEANUP)
    mc2 = t.mc2 if parallel.mc2 is None else parallel.mc2
    return (parallel.shard_spec, *fusions, *(("fuse_mc2",) if mc2 else ()), *CLEANUP)


def pipeline_for(target: str, tp: int = 1, sequence_parallel: bool = False,
                 mc2: bool | None = None) -> str:
    """The pipeline spec (`a,b{opt=v},...`) of a target, tensor-parallel when tp > 1."""
    return ",".join(passes_for(target, Parallel(tp, sequence_parallel, mc2)))
