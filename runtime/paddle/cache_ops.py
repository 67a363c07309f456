"""Paddle lowerings of the cache form's KV ops (compiler/ops/cache.py): a functional write
of new keys/values at each row's past length, and the attention that reads the buffer."""

from __future__ import annotations

import math

from llmc.compiler.errors import LlmcError

from .lower import Lowering, lowers, operand_reader


def write_rows(ctx: Lowering, past, new, lens):
    """past [b, kv, max_len, d] with new [b, kv, seq, d] put at slots lens[r] .. + seq - 1."""
    p = ctx.paddle
    b, kv, seq, d = new.shape
    lens = lens.astype("int64")
    if seq and (int(lens.min()) < 0 or int((lens + seq).max()) > past.shape[2]):
        raise LlmcError(f"kv_cache_update: {lens.numpy().tolist()} cached + {seq} new tokens "
                        f"overflow the {past.shape[2]}-slot cache")
    slots = lens.unsqueeze(1) + p.arange(seq, dtype="int64").unsqueeze(0)  # [b, seq]
    index = slots.reshape([b, 1, seq, 1]).expand([b, kv, seq, d])
    return p.put_along_axis(past, index, new, axis=2, reduce="assign")


@lowers("kv_cache_update")
def _kv_cache_update(op, ctx):
    args = operand_reader(op, "past", "new", "past_lens")
    return lambda env: [write_rows(ctx, *args(env))]


@lowers("cached_attention")
def _cached_attention(op, ctx):
    scale = op.attrs["scale"]
    args = operand_reader(op, "q", "k", "v", "past_k", "past_v", "past_lens", "bias")
    p = ctx.paddle
    ctx.kernels.note("cached_attention", "paddle.nn.functional.scaled_dot_product_attention")

    def run(env):
        q, k, v, past_k, past_v, lens, bias = args(env)
        pk = write_rows(ctx, past_k, k.transpose([0, 2, 1, 3]), lens)
        pv = write_rows(ctx, past_v, v.transpose([0, 2, 1, 3]), lens)
        seq, max_len = q.shape[1], pk.shape[2]
        pos = lens.astype("int64").unsqueeze(1) + p.arange(seq, dtype="int64").unsqueeze(0)
        allowed = p.arange(max_len, dtype="int64").reshape([1, 1, max_len]) <= pos.unsqueeze(2)
        mask = p.where(allowed, p.zeros([1], "float32"), p.full([1], float("-inf"), "float32"))
        mask = mask.unsqueeze(1)  # [b, 1, seq, max_len]
        if bias is not None:
            mask = mask + bias
        out = ctx.F.scaled_dot_product_attention(
            q, pk.transpose([0, 2, 1, 3]), pv.transpose([0, 2, 1, 3]), attn_mask=mask,
            training=False, scale=scale or 1.0 / math.sqrt(q.shape[-1]))
        return [out, pk, pv]

    return run
