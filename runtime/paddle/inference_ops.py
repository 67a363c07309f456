"""Paddle lowerings of the inference form's packing and paged-attention ops
(compiler/ops/inference.py) and of the fused ops the ascend910b pipeline makes from them
(compiler/ops/fused.py: `remove_padding`, `fused_blha_layer`).

Paddle's own `block_multihead_attention` kernel is GPU f16/bf16 (and XPU) only, and the
packing ops are PaddleNLP CUDA custom ops, so these are composites of Paddle ops on every
device; `Kernels.report` says so, and why. The attention writes the new keys/values into
the cache tensor in place when the op is the cache's only reader (as Paddle's kernel
does: its outputs alias its cache inputs), into a copy otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType
from llmc.compiler.ops.fused import FLAG_BEGIN, FLAG_END
from llmc.compiler.ops.nn import alibi_slopes
from llmc.compiler.signature import signature

from .lower import Lowering, lowers, operand_reader
from .nn_ops import rms_norm_fn, rope_tables, rotate, swiglu_fn

PACKING = "composite (masked_select / cumsum)"
ATTENTION = "composite: paged gather, rope/ALiBi, matmul-softmax-matmul over the fed sequences"
LAYER = ("composite: fused_rms_norm, linear, block_multihead_attention, fused_bias_act, "
         "with the kernels reported under those kinds")


@lru_cache(maxsize=512)
def iota(ctx: Lowering, n: int):
    """0 .. n-1 as an int64 tensor, kept per lowering: paddle.arange took ~110 us a call
    here, against ~3 us for an add of the same size."""
    return ctx.const(np.arange(n, dtype=np.int64))


# ---- packing --------------------------------------------------------------------------
def pack(ctx: Lowering, ids, cum_offsets, lens) -> list:
    """get_padding_offset: (packed ids, padding before each row, that padding per token,
    cu_seqlens_q, cu_seqlens_k) for the first lens[b] ids of each row of ids [batch, width]."""
    p = ctx.paddle
    lens = lens.reshape([-1]).astype("int64")
    width = ids.shape[1]
    valid = iota(ctx, width).unsqueeze(0) < lens.unsqueeze(1)
    packed = p.masked_select(ids, valid)
    zero = p.zeros([1], "int32")
    before = p.concat([zero, cum_offsets.reshape([-1])[:-1].astype("int32")])
    rows = p.repeat_interleave(iota(ctx, lens.shape[0]), lens)
    cu = p.concat([zero, p.cumsum(lens, axis=0).astype("int32")])
    return [packed, before, p.gather(before, rows), cu, cu.clone()]


@lowers("get_padding_offset")
def _get_padding_offset(op, ctx):
    ctx.kernels.note(op.kind, PACKING)
    args = operand_reader(op, "input_ids", "cum_offsets", "token_num", "seq_lens")

    def run(env):
        ids, cum, token_num, lens = args(env)
        n, total = int(token_num.reshape([-1])[0]), int(lens.astype("int64").sum())
        if n != total:
            raise LlmcError(f"get_padding_offset: token_num {n} != sum(seq_lens) {total}")
        return pack(ctx, ids, cum, lens)

    return run


@lowers("remove_padding")
def _remove_padding(op, ctx):
    ctx.kernels.note(op.kind, PACKING)
    args = operand_reader(op, "input_ids", "seq_lens_this_time")

    def run(env):
        ids, lens = args(env)
        pad = ids.shape[1] - lens
        return pack(ctx, ids, ctx.paddle.cumsum(pad, axis=0).astype(lens.dtype), lens)

    return run


def rebuild(ctx: Lowering, h, cum_offsets, dec, enc, max_len):
    """rebuild_padding: each sequence's row of packed h [tokens, hidden] (its last prompt
    token after a prefill, its token in a decode, zeros when it did not run)."""
    p = ctx.paddle
    batch = cum_offsets.shape[0]
    if h.shape[0] == 0:
        return p.zeros([batch, h.shape[1]], h.dtype)
    width = int(max_len.reshape([-1])[0])
    dec, enc = dec.astype("int64"), enc.astype("int64")
    seq_id = p.where(dec == 0, enc - 1, p.zeros_like(dec))
    index = iota(ctx, batch) * width - cum_offsets.astype("int64") + seq_id
    rows = p.gather(h, p.clip(index, 0, h.shape[0] - 1))
    ran = ((dec != 0) | (enc != 0)).unsqueeze(1)
    return p.where(ran, rows, p.zeros_like(rows))


@lowers("rebuild_padding")
def _rebuild_padding(op, ctx):
    ctx.kernels.note(op.kind, "composite (gather)")
    args = operand_reader(op, "h", "cum_offsets", "seq_lens_decoder", "seq_lens_encoder",
                          "max_len")
    return lambda env: [rebuild(ctx, *args(env))]


@lowers("blha_get_max_len")
def _blha_get_max_len(op, ctx):
    ctx.kernels.note(op.kind, "composite (max)", "Paddle's blha_get_max_len has GPU kernels only"
                     if ctx.kernels.device == "cpu" else None)
    args = operand_reader(op, "seq_lens_encoder", "seq_lens_decoder", "batch_size")
    p = ctx.paddle

    def largest(t, n):
        if n == 0:
            return p.zeros([1], "int32")
        return p.clip(t[:n].astype("int32").max(), min=0).reshape([1])

    def run(env):
        enc, dec, batch = args(env)
        return [largest(enc, batch.shape[0]), largest(dec, batch.shape[0])]

    return run


# ---- paged attention --------------------------------------------------------------------
@dataclass(frozen=True)
class Paged:
    """The attrs of block_multihead_attention / fused_blha_layer's attention."""

    num_heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    max_seq_len: int
    rope_theta: float
    rope_scaling_factor: float
    use_neox_style: bool
    use_alibi: bool

    @classmethod
    def of(cls, attrs: dict) -> "Paged":
        """The attention attrs of an op."""
        return cls(**{k: attrs[k] for k in cls.__dataclass_fields__})


@dataclass
class Batch:
    """One step's token layout: each packed token's live sequence (`live`: the sequences fed
    this step, in order), its offset in it and its position; per live sequence the
    positions cached before this step and its block table; the most positions a sequence
    holds after it and the most tokens one is fed."""

    live: object
    offset: object
    pos: object
    past: object
    tables: object
    held: int
    longest: int


def batch_layout(ctx: Lowering, a: Paged, enc, dec, this_time, cu_q, tables) -> Batch:
    """The token layout of one step, after checking each sequence fits its block table."""
    p = ctx.paddle
    lens = this_time.astype("int64")
    past = p.where(enc > 0, p.zeros_like(lens), dec.astype("int64"))
    need = (past + lens) * (lens > 0).astype("int64")
    limit = min(a.max_seq_len, tables.shape[1] * a.block_size)
    held = int(need.max())
    if held > limit:
        b = int(need.argmax())
        raise LlmcError(f"block_multihead_attention: sequence {b} needs {held} positions; the "
                        f"block table holds {tables.shape[1] * a.block_size}, max_seq_len "
                        f"{a.max_seq_len}")
    seq_of = p.repeat_interleave(iota(ctx, lens.shape[0]), lens)
    offset = iota(ctx, seq_of.shape[0]) - p.gather(cu_q.astype("int64"), seq_of)
    fed = p.nonzero(lens > 0).reshape([-1])
    live = p.gather(p.cumsum((lens > 0).astype("int64"), axis=0) - 1, seq_of)
    return Batch(live, offset, p.gather(past, seq_of) + offset, p.gather(past, fed),
                 p.gather(tables, fed), held, int(lens.max()))


def write_cache(ctx: Lowering, cache, new, blocks, slots, in_place: bool):
    """cache [blocks, kv, block_size, d] with new [tokens, kv, d] at (blocks[t], :, slots[t])."""
    p = ctx.paddle
    out = cache if in_place else cache.clone()
    heads = iota(ctx, cache.shape[1]).unsqueeze(0)
    return p.index_put_(out, (blocks.unsqueeze(1), heads, slots.unsqueeze(1)), new)


def read_cache(ctx: Lowering, cache, tables, n_blocks: int):
    """The first n_blocks blocks of each sequence: [batch, kv, n_blocks * block_size, d].
    (Blocks are gathered whole and only their outer dims swapped: Paddle's CPU transpose
    of the inner dims is ~10x slower.)"""
    p = ctx.paddle
    ids = p.clip(tables[:, :n_blocks].astype("int64"), min=0)  # (-1 marks unused entries)
    blocks = p.gather(cache, ids.reshape([-1]))
    b, (_, kv, bs, d) = tables.shape[0], cache.shape
    return blocks.reshape([b, n_blocks, kv, bs, d]).transpose([0, 2, 1, 3, 4]).reshape(
        [b, kv, n_blocks * bs, d])


def attention_mask(ctx: Lowering, a: Paged, lay: Batch, keys: int, slopes=None):
    """0 (or the ALiBi bias) where a query may see a key, -inf elsewhere: [live, 1|H, S, K].
    ALiBi's slopes are `slopes` [H] when given (the op's alibi_slopes operand), else those
    of a model of num_heads heads."""
    p = ctx.paddle
    qpos = lay.past.unsqueeze(1) + iota(ctx, lay.longest).unsqueeze(0)
    kpos = iota(ctx, keys)
    allowed = (kpos.reshape([1, 1, keys]) <= qpos.unsqueeze(2)).unsqueeze(1)
    if a.use_alibi:
        slopes = (ctx.const(alibi_slopes(a.num_heads)) if slopes is None
                  else slopes.astype("float32")).reshape([1, -1, 1, 1])
        dist = kpos.reshape([1, 1, 1, keys]) - qpos.unsqueeze(1).unsqueeze(3)
        bias = slopes * dist.astype("float32")
        return p.where(allowed, bias, p.full([1], float("-inf"), "float32"))
    return p.where(allowed, p.zeros([1], "float32"), p.full([1], float("-inf"), "float32"))


def attend(ctx: Lowering, a: Paged, q, keys, vals, lay: Batch, slopes=None):
    """Softmax attention of packed q [tokens, H, D] over keys/vals [live, KV, K, D], head
    h reading kv head h // (H / KV); [tokens, H * D]."""
    p = ctx.paddle
    h, kv, d = a.num_heads, a.kv_heads, a.head_dim
    n, s, k = lay.tables.shape[0], lay.longest, keys.shape[2]
    at = p.stack([lay.live.unsqueeze(1).expand([q.shape[0], h]),
                  iota(ctx, h).unsqueeze(0).expand([q.shape[0], h]),
                  lay.offset.unsqueeze(1).expand([q.shape[0], h])], axis=-1)
    padded = p.scatter_nd_add(p.zeros([n, h, s, d], q.dtype), at, q)  # [live, H, S, D]
    scores = p.matmul(padded.reshape([n, kv, -1, d]), keys, transpose_y=True)
    scores = scores.reshape([n, h, s, k]) * (1.0 / math.sqrt(d))
    probs = ctx.F.softmax(scores + attention_mask(ctx, a, lay, k, slopes), axis=-1)
    out = p.matmul(probs.reshape([n, kv, -1, k]), vals).reshape([n, h, s, d])
    return p.gather_nd(out, at).reshape([q.shape[0], h * d])


def block_attention(ctx: Lowering, a: Paged, qkv, cache_k, cache_v, enc, dec, this_time, cu_q,
                    tables, in_place: bool, slopes=None) -> list:
    """block_multihead_attention on packed qkv [tokens, (H + 2 KV) * D]: rope (or ALiBi, of
    `slopes` when given) at each token's position, its k/v written to the paged caches,
    causal attention over them; [out [tokens, H * D], cache_k, cache_v]."""
    p = ctx.paddle
    h, kv, d, bs = a.num_heads, a.kv_heads, a.head_dim, a.block_size
    tokens = qkv.shape[0]
    if tokens == 0:
        return [p.zeros([0, h * d], qkv.dtype), cache_k, cache_v]
    lay = batch_layout(ctx, a, enc, dec, this_time, cu_q, tables)
    q, k, v = p.split(qkv, [h * d, kv * d, kv * d], axis=1)
    q, k, v = q.reshape([tokens, h, d]), k.reshape([tokens, kv, d]), v.reshape([tokens, kv, d])
    if not a.use_alibi:
        cos, sin = rope_tables(ctx, lay.pos, d, a.rope_theta, a.rope_scaling_factor)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = (rotate(ctx, t, cos, sin, a.use_neox_style) for t in (q, k))
    blocks = p.gather_nd(lay.tables.astype("int64"), p.stack([lay.live, lay.pos // bs], axis=1))
    slots = lay.pos % bs
    ck = write_cache(ctx, cache_k, k, blocks, slots, in_place)
    cv = write_cache(ctx, cache_v, v, blocks, slots, in_place)
    n_blocks = -(-lay.held // bs)
    keys, vals = (read_cache(ctx, c, lay.tables, n_blocks) for c in (ck, cv))
    return [attend(ctx, a, q, keys, vals, lay, slopes), ck, cv]


def note_attention(ctx: Lowering, qkv_dtype: DType) -> None:
    """Record the attention's kernel; on a GPU say why Paddle's kernel was not used."""
    why = None
    if ctx.kernels.device == "gpu" and qkv_dtype in (DType.f16, DType.bf16):
        why = "Paddle's GPU block_multihead_attention is not wired in llmc (untested here)"
    ctx.kernels.note("block_multihead_attention", ATTENTION, why)


@lowers("block_multihead_attention")
def _block_multihead_attention(op, ctx):
    a = Paged.of(op.attrs)
    note_attention(ctx, op.operand("qkv").type.dtype)
    in_place = ctx.sole_reader(op.operand("cache_k")) and ctx.sole_reader(op.operand("cache_v"))
    args = operand_reader(op, *signature(op.kind).operands.plain)

    def run(env):
        qkv, ck, cv, enc, dec, this_time, _, _, cu_q, _, tables, _, _, slopes = args(env)
        return block_attention(ctx, a, qkv, ck, cv, enc, dec, this_time, cu_q, tables, in_place,
                               slopes)

    return run


# ---- the fused decoder layer --------------------------------------------------------------
LAYER_NAMES = ("x", "residual", "norm_w", "qkv_w", "out_w", "post_norm_w", "gate_up_w",
               "down_w", "cache_k", "cache_v", "seq_lens_encoder", "seq_lens_decoder",
               "seq_lens_this_time", "cum_offsets", "cu_seqlens_q", "block_tables", "max_len")


@lowers("fused_blha_layer")
def _fused_blha_layer(op, ctx):
    at = op.attrs
    a, flag, tw = Paged.of(at), at["flag"], at["transpose_w"]
    ctx.kernels.note(op.kind, LAYER)
    norm = rms_norm_fn(ctx, "fused_rms_norm", at["epsilon"])
    act = swiglu_fn(ctx, "fused_bias_act")
    note_attention(ctx, op.operand("cache_k").type.dtype)
    in_place = ctx.sole_reader(op.operand("cache_k")) and ctx.sole_reader(op.operand("cache_v"))
    args = operand_reader(op, *LAYER_NAMES)
    p = ctx.paddle

    def linear(x, w):
        return p.matmul(x, w, transpose_y=tw)

    def run(env):
        (x, residual, norm_w, qkv_w, out_w, post_w, gate_up_w, down_w, ck, cv, enc, dec,
         this_time, cum, cu_q, tables, max_len) = args(env)
        if flag == FLAG_BEGIN:
            x, residual = ctx.F.embedding(x, residual), None
        s1 = x if residual is None else x + residual
        qkv = linear(norm(s1, norm_w), qkv_w)
        attn, ck, cv = block_attention(ctx, a, qkv, ck, cv, enc, dec, this_time, cu_q, tables,
                                       in_place)
        s2 = linear(attn, out_w) + s1
        d = linear(act(linear(norm(s2, post_w), gate_up_w)), down_w)
        if flag != FLAG_END:
            return [d, s2, ck, cv]
        return [rebuild(ctx, d + s2, cum, dec, enc, max_len), ck, cv]

    return run

