"""The cache form (docs/graph-forms.md): HF-eager decomposed layers over per-layer KV
buffers preallocated to a maximum length, so one graph serves prefill and decode.

Inputs `%input_ids: i64[batch, seq]`, `%past_lens: i64[batch]` (tokens already cached per
row), and per layer i `%past_key_i`, `%past_value_i: f32[batch, kv_heads, max_len, head_dim]`.
Outputs: `logits: f32[batch, vocab]` (each row's last position), then `present_key_i`,
`present_value_i` in the order of the past inputs (the buffers with this step's keys and
values written at slots past_lens .. past_lens + seq - 1).
"""

from __future__ import annotations

import math

from llmc.compiler.builder import Builder
from llmc.compiler.ir import DType, Graph, Value

from . import decoder as dec
from .config import ModelConfig
from .llama import family
from .naming import Naming

F32 = DType.f32
I64_MAX = 2**63 - 1


class CacheInputs:
    """What every layer of the cache form reads."""

    def __init__(self, past_lens: Value, positions: Value, mask: Value,
                 rope: tuple[Value, Value] | None):
        self.past_lens, self.positions, self.mask, self.rope = past_lens, positions, mask, rope


def positions(b: Builder, past_lens: Value, input_ids: Value) -> Value:
    """Position ids [batch, seq]: past_lens[r] + sequence index."""
    idx = b.seq_index(input_ids, axis=1)
    return b.add(b.unsqueeze(past_lens, axes=[1]), b.unsqueeze(idx, axes=[0]), name="position_ids")


def cache_mask(b: Builder, cfg: ModelConfig, pos: Value, past_key: Value) -> Value:
    """Additive mask [batch, 1 or heads, seq, max_len]: -inf where a cache slot lies after
    the query's position (slots past a row's tokens included); plus ALiBi by slot index."""
    slot = b.seq_index(past_key, axis=2)
    later = b.less(b.unsqueeze(pos, axes=[2]), b.unsqueeze(slot, axes=[0, 1]))
    mask = b.unsqueeze(b.where(later, dec.const(b, -math.inf), dec.const(b, 0.0)), axes=[1])
    if cfg.position == "alibi":
        mask = b.add(mask, b.alibi_bias(slot, num_heads=cfg.num_heads))
    return mask


def cached_self_attention(f, x: Value, layer: int, ins: CacheInputs,
                          past: tuple[Value, Value]) -> tuple[Value, Value, Value]:
    """HF eager attention reading the KV buffers after this step's write:
    (o_proj output, present key, present value)."""
    b, cfg = f.b, f.cfg
    d = cfg.head_dim
    q, k, v = f.qkv(x, layer)
    q = b.reshape(q, shape=[0, 0, cfg.num_heads, d])
    k = b.reshape(k, shape=[0, 0, cfg.num_kv_heads, d])
    v = b.reshape(v, shape=[0, 0, cfg.num_kv_heads, d])
    if ins.rope is not None:
        q, k = dec.apply_rope(b, q, *ins.rope, d), dec.apply_rope(b, k, *ins.rope, d)
    q, k, v = (b.transpose(t, perm=[0, 2, 1, 3]) for t in (q, k, v))
    pk = b.kv_cache_update(past[0], k, ins.past_lens, name=f"present_key_{layer}")
    pv = b.kv_cache_update(past[1], v, ins.past_lens, name=f"present_value_{layer}")
    kr, vr = dec.repeat_kv(b, pk, cfg), dec.repeat_kv(b, pv, cfg)
    scores = b.mul(b.matmul(q, kr, transpose_b=True), dec.const(b, 1.0 / math.sqrt(d)))
    probs = b.softmax(b.add(scores, ins.mask), axis=-1)
    o = b.transpose(b.matmul(probs, vr), perm=[0, 2, 1, 3])
    h = cfg.hidden_size
    out = f.linear(b.reshape(o, shape=[0, 0, h]), f.names.attn(layer, "o_proj"), h, h)
    return out, pk, pv


def build_cache(cfg: ModelConfig, naming: Naming) -> Graph:
    """The cache-form graph of `cfg` (see the module docstring)."""
    b = Builder(f"{cfg.name}_cache".replace("-", "_"))
    f = family(cfg, naming, b, decomposed=True)
    ids = b.input("input_ids", DType.i64, ("batch", "seq"))
    past_lens = b.input("past_lens", DType.i64, ("batch",))
    kv_t = ("batch", cfg.num_kv_heads, "max_len", cfg.head_dim)
    pasts = [(b.input(f"past_key_{i}", F32, kv_t), b.input(f"past_value_{i}", F32, kv_t))
             for i in range(cfg.num_layers)]
    pos = positions(b, past_lens, ids)
    x = b.embedding(ids, f.embed())
    rope = dec.rope_tables(b, cfg, pos) if cfg.position == "rope" else None
    ins = CacheInputs(past_lens, pos, cache_mask(b, cfg, pos, pasts[0][0]), rope)
    presents: list[Value] = []
    for i in range(cfg.num_layers):
        attn, pk, pv = cached_self_attention(f, dec.norm(f, x, naming.input_norm(i)), i, ins,
                                             pasts[i])
        x = b.add(x, attn)
        x = b.add(x, dec.mlp(f, dec.norm(f, x, naming.post_norm(i)), i))
        presents += [pk, pv]
    last = b.slice(x, axes=[1], starts=[-1], ends=[I64_MAX])
    last = b.reshape(last, shape=[0, cfg.hidden_size], name="last_hidden")
    b.output(f.lm_head(dec.norm(f, last, naming.final_norm())), *presents)
    return b.graph
