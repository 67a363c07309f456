"""Graph builders for the llama family (llama / llama2 / Chinese-LLaMA-2 / Baichuan2).

`build_full` gives the HF-eager full-sequence forward, `build_inference` the
PaddleNLP block-attention generation graph; both are specified in
docs/graph-forms.md and share the decoder layer of frontends/decoder.py.
Parameters are typed from the config and naming only: no weight is read.
"""

from __future__ import annotations

from llmc.compiler.builder import Builder
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph, Value

from . import decoder as dec
from .config import ModelConfig
from .naming import Naming

F32 = DType.f32
I32 = DType.i32


class LlamaFamily:
    """Llama, Llama-2, Chinese-LLaMA-2/Alpaca-2: separate q/k/v projections (MHA or GQA)."""

    def __init__(self, cfg: ModelConfig, names: Naming, b: Builder, decomposed: bool = True):
        self.cfg, self.names, self.b, self.decomposed = cfg, names, b, decomposed

    @property
    def transpose_w(self) -> bool:
        return not self.names.linear_in_out

    def weight(self, name: str, shape: tuple[int, ...]) -> Value:
        """The parameter `name`, declared (as f32) on first use."""
        p = self.b.graph.params.get(name)
        if p is None:
            return self.b.param(name, F32, shape)
        if p.type.shape != tuple(shape):
            raise LlmcError(f"parameter '{name}' used with shapes {list(p.type.shape)} "
                            f"and {list(shape)}")
        return p

    def linear(self, x: Value, name: str, out_features: int, in_features: int) -> Value:
        w = self.weight(name, self.names.linear_shape(out_features, in_features))
        return self.b.linear(x, w, transpose_w=self.transpose_w)

    def packed_linear(self, x: Value, names: list[str], outs: list[int], in_features: int) -> Value:
        """One linear over the concatenation of several Linear weights along their out dim."""
        if len(names) == 1:
            return self.linear(x, names[0], outs[0], in_features)
        ws = [self.weight(n, self.names.linear_shape(o, in_features)) for n, o in zip(names, outs)]
        w = self.b.concat(*ws, axis=1 if self.names.linear_in_out else 0)
        return self.b.linear(x, w, transpose_w=self.transpose_w)

    def qkv_names(self, layer: int) -> tuple[list[str], list[int]]:
        """The q/k/v weights of `layer` and their out features (one `qkv_proj` when fused)."""
        c, a = self.cfg, self.names.attn
        kv = c.num_kv_heads * c.head_dim
        if self.names.fused_qkv:
            return [a(layer, "qkv_proj")], [c.hidden_size + 2 * kv]
        return [a(layer, "q_proj"), a(layer, "k_proj"), a(layer, "v_proj")], [c.hidden_size, kv, kv]

    def qkv(self, x: Value, layer: int) -> tuple[Value, Value, Value]:
        """q, k, v projections; their leading two dims are x's, the rest reshape to heads."""
        if self.names.fused_qkv:
            return self._grouped_qkv(x, layer)
        names, outs = self.qkv_names(layer)
        q, k, v = (self.linear(x, n, o, self.cfg.hidden_size) for n, o in zip(names, outs))
        return q, k, v

    def _grouped_qkv(self, x: Value, layer: int) -> tuple[Value, Value, Value]:
        """One linear on `qkv_proj`, split per KV group:
        q [batch, seq, kv, group, d], k and v [batch, seq, kv, 1, d]."""
        c = self.cfg
        names, outs = self.qkv_names(layer)
        y = self.linear(x, names[0], outs[0], c.hidden_size)
        group = c.num_heads // c.num_kv_heads
        y = self.b.reshape(y, shape=[0, 0, c.num_kv_heads, group + 2, c.head_dim])
        q, k, v = self.b.split(y, axis=3, sizes=[group, 1, 1])
        return q, k, v

    def packed_qkv(self, x: Value, layer: int) -> Value:
        """x times the packed [Q|K|V] weight: the operand block_multihead_attention reads."""
        names, outs = self.qkv_names(layer)
        if not self.names.fused_qkv:
            return self.packed_linear(x, names, outs, self.cfg.hidden_size)
        return self.b.linear(x, self._qkv_rows(layer), transpose_w=self.transpose_w)

    def _qkv_rows(self, layer: int) -> Value:
        """`qkv_proj` reordered in the graph from per-KV-group [q.., k, v] to [Q|K|V] features."""
        c, in_out = self.cfg, self.names.linear_in_out
        h, d, kv = c.hidden_size, c.head_dim, c.num_kv_heads
        group = c.num_heads // kv
        names, outs = self.qkv_names(layer)
        w = self.weight(names[0], self.names.linear_shape(outs[0], h))
        grouped = [h, kv, group + 2, d] if in_out else [kv, group + 2, d, h]
        axis = 2 if in_out else 1
        parts = self.b.split(self.b.reshape(w, shape=grouped), axis=axis, sizes=[group, 1, 1])
        flat = [h, -1] if in_out else [-1, h]
        rows = [self.b.reshape(p, shape=flat) for p in parts]
        return self.b.concat(*rows, axis=1 if in_out else 0)

    def embed(self) -> Value:
        return self.weight(self.names.embed(), (self.cfg.vocab_size, self.cfg.hidden_size))

    def lm_head(self, x: Value) -> Value:
        """Logits; Baichuan2's NormHead L2-normalises each vocabulary row of the weight."""
        c = self.cfg
        if c.tie_word_embeddings:
            w, transpose = self.embed(), True
        else:
            shape = self.names.linear_shape(c.vocab_size, c.hidden_size)
            w = self.weight(self.names.lm_head, shape)
            transpose = self.transpose_w
        if c.norm_head:
            w = self.b.l2_normalize(w, axis=-1 if transpose else 0, epsilon=1e-12)
        return self.b.linear(x, w, transpose_w=transpose, name="logits")


class BaichuanFamily(LlamaFamily):
    """Baichuan2-7B / 13B: one `W_pack` projection holding [Q|K|V] rows."""

    def qkv_names(self, layer: int) -> tuple[list[str], list[int]]:
        return [self.names.attn(layer, "W_pack")], [3 * self.cfg.hidden_size]

    def qkv(self, x: Value, layer: int) -> tuple[Value, Value, Value]:
        h = self.cfg.hidden_size
        packed = self.linear(x, self.names.attn(layer, "W_pack"), 3 * h, h)
        q, k, v = self.b.split(packed, axis=-1, sizes=[h, h, h])
        return q, k, v


FAMILIES = {"llama": LlamaFamily, "baichuan": BaichuanFamily}


def family(cfg: ModelConfig, names: Naming, b: Builder, decomposed: bool = True) -> LlamaFamily:
    """The builder for cfg's architecture family."""
    try:
        cls = FAMILIES[cfg.family]
    except KeyError:
        raise LlmcError(f"no graph builder for model family '{cfg.family}' "
                        f"(supported: {', '.join(FAMILIES)})") from None
    if cfg.num_heads % cfg.num_kv_heads or cfg.hidden_size % cfg.num_heads:
        raise LlmcError(f"{cfg.name}: {cfg.num_heads} heads, {cfg.num_kv_heads} kv heads and "
                        f"hidden size {cfg.hidden_size} do not divide")
    return cls(cfg, names, b, decomposed)


def _graph_name(cfg: ModelConfig, form: str) -> str:
    return f"{cfg.name}_{form}".replace("-", "_")


def build_full(cfg: ModelConfig, naming: Naming, *, decomposed: bool = True) -> Graph:
    """The full-sequence causal forward: (input_ids, position_ids) -> logits [batch, seq, vocab].

    `decomposed=False` uses the core `rms_norm`, `rope` and `attention` ops instead of
    HF-eager's elementary ops (what the fusion passes produce).
    """
    b = Builder(_graph_name(cfg, "full"))
    f = family(cfg, naming, b, decomposed)
    ids = b.input("input_ids", DType.i64, ("batch", "seq"))
    pos = b.input("position_ids", DType.i64, ("batch", "seq"))
    x = b.embedding(ids, f.embed())
    rope = dec.rope_tables(b, cfg, pos) if decomposed and cfg.position == "rope" else None
    ins = dec.FullInputs(pos, dec.causal_mask(b, cfg, pos, ids), rope)
    for i in range(cfg.num_layers):
        x = dec.decoder_layer(f, x, i, ins)
    x = dec.norm(f, x, naming.final_norm())
    b.output(f.lm_head(x))
    return b.graph


def build_inference(cfg: ModelConfig, naming: Naming, *, block_size: int = 16,
                    max_blocks: int | None = None) -> Graph:
    """The block-attention generation graph: packed tokens, paged KV caches threaded
    through as inputs and outputs; logits of each sequence's last token."""
    if block_size < 1 or (max_blocks is not None and max_blocks < 1):
        raise LlmcError(f"block_size ({block_size}) and max_blocks ({max_blocks}) must be positive")
    b = Builder(_graph_name(cfg, "inference"))
    f = family(cfg, naming, b)
    ids = b.input("input_ids", DType.i64, ("batch", "max_len"))
    this_time = b.input("seq_lens_this_time", I32, ("batch",))
    enc = b.input("seq_lens_encoder", I32, ("batch",))
    dec_lens = b.input("seq_lens_decoder", I32, ("batch",))
    tables = b.input("block_tables", I32, ("batch", max_blocks or "max_blocks"))
    cache_t = ("num_blocks", cfg.num_kv_heads, block_size, cfg.head_dim)
    caches = [(b.input(f"cache_k_{i}", F32, cache_t), b.input(f"cache_v_{i}", F32, cache_t))
              for i in range(cfg.num_layers)]
    max_len = b.dim_size(ids, axis=1, name="max_len")
    cum_now = b.cumsum(b.sub(b.cast(max_len, dtype=I32), this_time))
    token_num = b.reduce_sum(this_time, name="token_num")
    packed, cum_offsets, pad_offset, cu_q, cu_k = b.get_padding_offset(ids, cum_now, token_num,
                                                                       this_time)
    x = b.embedding(packed, f.embed())
    max_enc, max_dec = b.blha_get_max_len(enc, dec_lens, this_time)
    batch = dec.Batch(enc, dec_lens, this_time, pad_offset, cum_offsets, cu_q, cu_k, tables,
                      max_enc, max_dec)
    attrs = dict(num_heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                 block_size=block_size,
                 max_seq_len=max_blocks * block_size if max_blocks else cfg.max_position_embeddings,
                 rope_theta=cfg.rope_theta, rope_scaling_factor=cfg.rope_scaling_factor,
                 use_neox_style=True, use_alibi=cfg.position == "alibi")
    residual, new_caches = None, []
    for i in range(cfg.num_layers):
        x, residual, ck, cv = dec.inference_layer(f, x, residual, i, batch, caches[i], attrs)
        new_caches += [ck, cv]
    h, _ = b.fused_bias_residual_layernorm(x, residual)
    last = b.rebuild_padding(h, cum_offsets, dec_lens, enc, max_len)
    norm_w = f.weight(naming.final_norm(), (cfg.hidden_size,))
    x = b.rms_norm(last, norm_w, epsilon=cfg.rms_norm_eps)
    b.output(f.lm_head(x), *new_caches)
    return b.graph
