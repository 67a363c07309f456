"""One op per tiny graph: the case builder the per-runtime lowering tests share."""

import numpy as np

from llmc.compiler.builder import Builder
from llmc.compiler.ir import DType
from llmc.compiler.ops.nn import alibi_slopes

rng = np.random.default_rng(0)


def f32(*shape, positive=False):
    x = rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.1 if positive else x


def i64(*shape, high=6):
    return rng.integers(0, high, shape).astype(np.int64)


class Case:
    """One op on given arrays; `params` names the operands that are weights (static)."""

    def __init__(self, kind, *arrays, params=(), **attrs):
        self.kind, self.arrays, self.params, self.attrs = kind, arrays, set(params), attrs

    def __repr__(self):
        extra = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.kind}[{extra}|{len(self.arrays)}]"

    def graph(self):
        b = Builder("case")
        vals, feeds, weights = [], {}, {}
        for i, a in enumerate(self.arrays):
            name = f"x{i}"
            if i in self.params:
                vals.append(b.param(name, DType.from_np(a.dtype), a.shape))
                weights[name] = a
            else:
                vals.append(b.input(name, DType.from_np(a.dtype), a.shape))
                feeds[name] = a
        out = b.op(self.kind, *vals, **self.attrs)
        b.output(*(out if isinstance(out, tuple) else (out,)))
        return b.graph, feeds, weights


# ---- the inference form's ops (paged block attention, packing, the fused layer) -------------
def i32(*values):
    return np.asarray(values, np.int32)


# One step of four sequences over 4-slot blocks: 0 prefills 3 tokens, 1 decodes at position
# 5, 2 sits out, 3 feeds 2 tokens after 6 cached ones (crossing into its third block).
PAGED_STEP = dict(enc=i32(3, 0, 0, 0), dec=i32(0, 5, 2, 6), this_time=i32(3, 1, 0, 2),
                  padding_offset=i32(0, 0, 0, 0, 5, 5), cum_offsets=i32(0, 0, 2, 5),
                  cu=i32(0, 3, 4, 4, 6), width=3)
TOKENS, BLOCK, BLOCKS_PER_SEQ = 6, 4, 3


def paged_operands(r, heads, kv, d):
    """qkv and the caches, then the batch operands of block_multihead_attention."""
    s = PAGED_STEP
    tables = r.permutation(4 * BLOCKS_PER_SEQ).astype(np.int32).reshape(4, BLOCKS_PER_SEQ)
    caches = [r.standard_normal((4 * BLOCKS_PER_SEQ, kv, BLOCK, d)).astype(np.float32)
              for _ in range(2)]
    batch = (s["enc"], s["dec"], s["this_time"], s["padding_offset"], s["cum_offsets"],
             s["cu"], s["cu"].copy(), tables)
    return caches, batch


def blha_cases(r) -> list:
    """block_multihead_attention: rope (neox, interleaved, scaled) and ALiBi, GQA and MHA."""
    out = []
    for heads, kv, attrs in ((4, 2, {}), (4, 4, dict(use_neox_style=False, rope_theta=500.0,
                                                     rope_scaling_factor=2.0)),
                             (6, 2, dict(use_alibi=True))):
        (ck, cv), batch = paged_operands(r, heads, kv, 8)
        qkv = r.standard_normal((TOKENS, (heads + 2 * kv) * 8)).astype(np.float32)
        out.append(Case("block_multihead_attention", qkv, ck, cv, *batch, i32(3), i32(6),
                        num_heads=heads, kv_heads=kv, head_dim=8, block_size=BLOCK,
                        max_seq_len=BLOCK * BLOCKS_PER_SEQ, **attrs))
    # a prefilling sequence starts at position 0 whatever its decoder length says
    stale = out[0].arrays[:4] + (i32(4, 5, 2, 6),) + out[0].arrays[5:]
    # ALiBi slopes as an operand: rank 1 of 2 holding heads 6..11 of a 12-head model
    alibi = out[2]
    rank_slopes = alibi_slopes(2 * alibi.attrs["num_heads"])[alibi.attrs["num_heads"]:]
    return out + [Case(out[0].kind, *stale, **out[0].attrs),
                  Case(alibi.kind, *alibi.arrays, rank_slopes, **alibi.attrs)]


def layer_cases(r) -> list:
    """fused_blha_layer with each flag (hidden 32, 4 heads of 8 over 2 kv heads, inter 24)."""
    (ck, cv), batch = paged_operands(r, 4, 2, 8)
    hidden, inter, vocab = 32, 24, 50

    def w(*shape):
        return (r.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    weights = (np.abs(w(hidden)) + 0.5, w(64, hidden), w(hidden, 32), np.abs(w(hidden)) + 0.5,
               w(2 * inter, hidden), w(hidden, inter))
    attrs = dict(num_heads=4, kv_heads=2, head_dim=8, block_size=BLOCK,
                 max_seq_len=BLOCK * BLOCKS_PER_SEQ, epsilon=1e-5)
    x, res = w(TOKENS, hidden), w(TOKENS, hidden)
    ids = r.integers(0, vocab, TOKENS).astype(np.int64)
    width = np.asarray(PAGED_STEP["width"], np.int64)
    params = range(2, 8)
    return [Case("fused_blha_layer", ids, w(vocab, hidden), *weights, ck, cv, *batch,
                 params=[1, *params], flag=1, **attrs),
            Case("fused_blha_layer", x, res, *weights, ck, cv, *batch, params=params, **attrs),
            Case("fused_blha_layer", x, res, *weights, ck, cv, *batch, width, params=params,
                 flag=2, rope_theta=500000.0, **attrs)]


def inference_cases() -> list:
    """Cases of every op the inference form and the ascend910b pipeline make beyond the
    per-op targets' (own random stream: the other cases' draws stay as they were)."""
    r = np.random.default_rng(1)
    ids = r.integers(1, 90, (3, 5)).astype(np.int64)
    lens = i32(2, 0, 5)
    cum = np.cumsum(5 - lens).astype(np.int32)
    h = r.standard_normal((3, 8)).astype(np.float32)
    return [
        Case("get_padding_offset", ids, cum, np.asarray(7, np.int32), lens),
        Case("remove_padding", ids, lens), Case("remove_padding", ids[:1], i32(5)),
        # 0 prefilled 2 tokens, 1 did not run, 2 decoded one (packed rows 0-1, -, 2)
        Case("rebuild_padding", h, i32(0, 3, 8), i32(0, 0, 4), i32(2, 0, 0),
             np.asarray(5, np.int64)),
        Case("blha_get_max_len", i32(3, 0, 9), i32(0, 7, 2), i32(1, 1, 1)),
        Case("blha_get_max_len", i32(3, 0, 9), i32(0, 7, 2), i32(1, 1)),
        *blha_cases(r), *layer_cases(r),
    ]
