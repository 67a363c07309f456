"""Fused ops the target pipelines produce. Every reference kernel composes the
unfused ops' reference kernels (looked up in the registry at call time), so a
fused op means exactly what the chain it replaces means."""

from __future__ import annotations

import numpy as np

from ..ir import DType, TensorType
from .registry import AttrSpec, OpError, defop, get_op
from .shapes import expect_dim, expect_float, expect_int


def _k(kind: str, *arrays, **attrs) -> list[np.ndarray]:
    """Run one registered op's reference kernel (attrs are defaulted like in the IR)."""
    op = get_op(kind)
    return op.run(list(arrays), op.normalize_attrs(attrs))


def _t(kind: str, *types: TensorType, **attrs) -> list[TensorType]:
    """Infer one registered op's result types."""
    op = get_op(kind)
    return op.infer_types(list(types), op.normalize_attrs(attrs))


# ---- add + rms_norm -------------------------------------------------------------
def _add_rms_norm_infer(x: TensorType, residual: TensorType, w: TensorType, epsilon):
    s = _t("add", x, residual)[0]
    expect_dim("add_rms_norm", "sum shape", s.shape, x.shape)
    return _t("rms_norm", s, w, epsilon=epsilon)[0], s


@defop(
    "add_rms_norm",
    ("x", "residual", "w"),
    outputs=("out", "sum"),
    attrs={"epsilon": AttrSpec("float", 1e-6)},
    infer=_add_rms_norm_infer,
)
def add_rms_norm(x, residual, w, epsilon):
    """(rms_norm(x + residual, w), x + residual): the residual add fused into the norm."""
    s = _k("add", x, residual)[0]
    return _k("rms_norm", s, w, epsilon=epsilon)[0], s


# ---- lm_head -------------------------------------------------------------------
def _lm_head_infer(x: TensorType, norm_w: TensorType, w: TensorType, epsilon, transpose_w):
    n = _t("rms_norm", x, norm_w, epsilon=epsilon)[0]
    return _t("linear", n, w, transpose_w=transpose_w)[0]


@defop(
    "lm_head",
    ("x", "norm_w", "w"),
    attrs={"epsilon": AttrSpec("float", 1e-6), "transpose_w": AttrSpec("bool", True)},
    infer=_lm_head_infer,
)
def lm_head(x, norm_w, w, epsilon, transpose_w):
    """linear(rms_norm(x, norm_w), w): the final norm and the vocabulary projection."""
    n = _k("rms_norm", x, norm_w, epsilon=epsilon)[0]
    return _k("linear", n, w, transpose_w=transpose_w)[0]


# ---- remove_padding ------------------------------------------------------------
def _padding_chain_types(ids: TensorType, seq_lens: TensorType) -> list[TensorType]:
    max_len = _t("dim_size", ids, axis=1)[0]
    diff = _t("sub", _t("cast", max_len, dtype=seq_lens.dtype)[0], seq_lens)[0]
    cum = _t("cumsum", diff)[0]
    token_num = _t("reduce_sum", seq_lens)[0]
    return _t("get_padding_offset", ids, cum, token_num, seq_lens)


def _remove_padding_infer(ids: TensorType, seq_lens: TensorType):
    expect_int("remove_padding", "input_ids", ids)
    expect_int("remove_padding", "seq_lens_this_time", seq_lens)
    return _padding_chain_types(ids, seq_lens)


@defop(
    "remove_padding",
    ("input_ids", "seq_lens_this_time"),
    outputs=("ids_remove_padding", "cum_offsets", "padding_offset", "cu_seqlens_q", "cu_seqlens_k"),
    infer=_remove_padding_infer,
)
def remove_padding(ids, seq_lens):
    """get_padding_offset with its operands (cumulative padding, token count) computed inside."""
    max_len = _k("dim_size", ids, axis=1)[0]
    diff = _k("sub", _k("cast", max_len, dtype=DType.from_np(seq_lens.dtype))[0], seq_lens)[0]
    cum = _k("cumsum", diff)[0]
    token_num = _k("reduce_sum", seq_lens)[0]
    return tuple(_k("get_padding_offset", ids, cum, token_num, seq_lens))


# ---- the fused decoder layer (Ascend ATB style) -----------------------------------
LAYER_INPUTS = (
    "x",
    "residual",
    "norm_w",
    "qkv_w",
    "out_w",
    "post_norm_w",
    "gate_up_w",
    "down_w",
    "cache_k",
    "cache_v",
    "seq_lens_encoder",
    "seq_lens_decoder",
    "seq_lens_this_time",
    "padding_offset",
    "cum_offsets",
    "cu_seqlens_q",
    "cu_seqlens_k",
    "block_tables",
    "max_len?",
)
# flag 2 (end) returns no residual_out: its residual add is inside the op.
LAYER_OUTPUTS = ("out", "residual_out?", "cache_k_out", "cache_v_out")
ATTN_ATTRS = (
    "num_heads",
    "kv_heads",
    "head_dim",
    "block_size",
    "max_seq_len",
    "rope_theta",
    "rope_scaling_factor",
    "use_neox_style",
    "use_alibi",
)
LAYER_ATTRS = {
    "flag": AttrSpec("int", 0),
    "epsilon": AttrSpec("float", 1e-6),
    "transpose_w": AttrSpec("bool", True),
    "num_heads": AttrSpec("int"),
    "kv_heads": AttrSpec("int"),
    "head_dim": AttrSpec("int"),
    "block_size": AttrSpec("int"),
    "max_seq_len": AttrSpec("int"),
    "rope_theta": AttrSpec("float", 10000.0),
    "rope_scaling_factor": AttrSpec("float", 1.0),
    "use_neox_style": AttrSpec("bool", True),
    "use_alibi": AttrSpec("bool", False),
}
FLAG_BEGIN, FLAG_MIDDLE, FLAG_END = 1, 0, 2


def _layer(
    ops,
    x,
    residual,
    norm_w,
    qkv_w,
    out_w,
    post_w,
    gate_up_w,
    down_w,
    cache_k,
    cache_v,
    batch,
    max_len,
    flag,
    epsilon,
    transpose_w,
    **attn,
):
    """The layer written once over an op-runner (`_k` for arrays, `_t` for types)."""
    if flag not in (FLAG_BEGIN, FLAG_MIDDLE, FLAG_END):
        raise OpError(
            f"op 'fused_blha_layer': flag must be 1 (begin), 0 (middle) or 2 (end), got {flag}"
        )
    if flag == FLAG_BEGIN:
        x, residual = ops("embedding", x, residual)[0], None
    res = () if residual is None else (residual,)
    n1, s1 = ops("fused_rms_norm", x, norm_w, *res, epsilon=epsilon)
    qkv = ops("linear", n1, qkv_w, transpose_w=transpose_w)[0]
    enc, dec, this_time = batch[0], batch[1], batch[2]
    max_enc, max_dec = ops("blha_get_max_len", enc, dec, this_time)
    a, ck, cv = ops(
        "block_multihead_attention", qkv, cache_k, cache_v, *batch, max_enc, max_dec, **attn
    )
    o = ops("linear", a, out_w, transpose_w=transpose_w)[0]
    n2, s2 = ops("fused_rms_norm", o, post_w, s1, epsilon=epsilon)
    gu = ops("linear", n2, gate_up_w, transpose_w=transpose_w)[0]
    act = ops("fused_bias_act", gu, act_method="swiglu")[0]
    d = ops("linear", act, down_w, transpose_w=transpose_w)[0]
    if flag != FLAG_END:
        return d, s2, ck, cv
    if max_len is None:
        raise OpError("op 'fused_blha_layer': flag 2 (end) needs the max_len operand")
    h = ops("add", d, s2)[0]
    last = ops("rebuild_padding", h, batch[4], dec, enc, max_len)[0]
    return last, ck, cv


def _split_operands(args):
    if len(args) not in (18, 19):
        raise OpError(f"op 'fused_blha_layer' takes 18 or 19 operands, got {len(args)}")
    return (*args[:10], tuple(args[10:18]), args[18] if len(args) == 19 else None)


def _layer_infer(*types: TensorType, **attrs):
    if attrs["flag"] == FLAG_BEGIN:
        expect_int("fused_blha_layer", "x (token ids, flag 1)", types[0])
    else:
        expect_float("fused_blha_layer", types[0])
    return list(_layer(_t, *_split_operands(types), **attrs))


@defop("fused_blha_layer", LAYER_INPUTS, outputs=LAYER_OUTPUTS, attrs=LAYER_ATTRS, infer=_layer_infer)
def fused_blha_layer(*arrays, **attrs):
    """One whole decoder layer over the paged KV cache: (out, residual_out, cache_k, cache_v).

    flag 1 (begin): x holds the packed token ids and residual the embedding table.
    flag 0 (middle): x and residual are the previous layer's two outputs.
    flag 2 (end): also adds the residual and gathers each sequence's last token
    (rebuild_padding, which needs max_len): (hidden [batch, hidden], cache_k, cache_v).
    """
    return tuple(_layer(_k, *_split_operands(arrays), **attrs))
