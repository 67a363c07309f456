"""The vendor's whole-layer fusions on the inference form → `fused_blha_layer`:
llama_fuse_attention_layer_begin (embedding + layer 0, flag 1),
llama_fuse_attention_layer_end (last layer + residual add + rebuild_padding, flag 2),
llama_fuse_attention_layer (every other layer, flag 0).

A layer has four results and two spellings of each norm (`fused_rms_norm` with a
residual, or `add` + `rms_norm` after remove_residual_in_rms_norm), so it is matched
by a walk from its `block_multihead_attention` anchor rather than one pattern tree:
one walk per anchor keeps the pass linear in the number of layers.

The last layer belongs to llama_fuse_attention_layer_end whatever the pass order: the
middle fusion leaves a layer alone when the end fusion would take it, so each pass
matches what the model structure predicts (n - 2 middle layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from llmc.compiler.builder import make_op
from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.ops.fused import ATTN_ATTRS, FLAG_BEGIN, FLAG_END, FLAG_MIDDLE
from llmc.compiler.passmanager import PassContext, define_pass
from llmc.compiler.rewrite import erase_dead
from llmc.compiler.signature import signature

from .fuse_common import all_users_after, count, num_layers, per_layer_or_count

# The block_multihead_attention operands a fused layer takes over as they are.
PAGED_OPERANDS = ("cache_k", "cache_v", "seq_lens_encoder", "seq_lens_decoder",
                  "seq_lens_this_time", "padding_offset", "cum_offsets", "cu_seqlens_q",
                  "cu_seqlens_k", "block_tables")
MAX_LEN_OF = {"seq_lens_encoder": "max_enc_len_this_time",
              "seq_lens_decoder": "max_dec_len_this_time"}


@dataclass
class Layer:
    """One matched decoder layer: operands, results and the ops it covers."""

    x: Value
    residual: Value | None
    weights: dict[str, Value]  # norm_w, qkv_w, out_w, post_norm_w, gate_up_w, down_w
    epsilon: float
    transpose_w: bool
    out: Value
    residual_out: Value
    anchor: Op
    ops: list[Op] = field(default_factory=list)
    inside: set[Op] = field(init=False)  # `ops` as a set, for membership tests

    def __post_init__(self) -> None:
        self.inside = set(self.ops)


def _only_user(v: Value, kind: str) -> Op | None:
    """The single user of the op result `v` when it is a `kind` op, else None."""
    user = v.producer.graph.single_user(v)
    return user if user is not None and user.kind == kind else None


def _norm_in(n: Value, ops: list[Op]):
    """(x, residual, w, eps, sum) for an input norm in either spelling, or None."""
    op = n.producer
    if op is None or op.kind not in ("fused_rms_norm", "rms_norm") or n is not op.result("out"):
        return None
    ops.append(op)
    eps = op.attrs["epsilon"]
    if op.kind == "fused_rms_norm":
        return op.operand("x"), op.operand("residual"), op.operand("w"), eps, op.result("residual_out")
    s = op.operand("x")
    add = s.producer
    if add is not None and add.kind == "add" and add.operand("lhs").type == add.operand("rhs").type == s.type:
        ops.append(add)
        return add.operand("lhs"), add.operand("rhs"), op.operand("w"), eps, s
    return s, None, op.operand("w"), eps, s


def _norm_post(o: Value, s1: Value, ops: list[Op]):
    """(w, eps, normed, sum) for the post-attention norm adding s1 to o, or None."""
    users = list(o.users)
    if len(users) != 1:
        return None
    op = users[0]
    if op.kind == "fused_rms_norm" and op.operand("x") is o and op.operand("residual") is s1:
        ops.append(op)
        return op.operand("w"), op.attrs["epsilon"], op.result("out"), op.result("residual_out")
    if op.kind == "add" and {op.operand("lhs"), op.operand("rhs")} == {o, s1}:
        norm = next((u for u in op.output.users
                     if u.kind == "rms_norm" and u.operand("x") is op.output), None)
        if norm is None or len(norm.output.users) != 1:
            return None
        ops += [op, norm]
        return norm.operand("w"), norm.attrs["epsilon"], norm.output, op.output
    return None


def _is_max_len(bma: Op, lens_name: str) -> bool:
    """The anchor's max length operand for `lens_name` holds max(lens) as i32[1]:
    blha_get_max_len's matching result or its decomposition."""
    lens, v = bma.operand(lens_name), bma.operand(MAX_LEN_OF[lens_name])
    op = v.producer
    if op is None:
        return False
    if op.kind == "blha_get_max_len":
        return op.result(MAX_LEN_OF[lens_name]) is v and op.operand(lens_name) is lens
    if op.kind == "maximum":
        red = op.operand("lhs").producer
        return red is not None and red.kind == "reduce_max" and red.operand("x") is lens
    return False


def _linear(v: Value, ops: list[Op]) -> Op | None:
    op = v.producer
    if op is None or op.kind != "linear" or op.operand("bias") is not None:
        return None
    ops.append(op)
    return op


def _ffn(n2: Value, eps: float, eps2: float, ops: list[Op]) -> tuple[Op, Op] | None:
    """(gate_up linear, down linear) of the swiglu feed-forward reading the normed n2."""
    lin_gu = _only_user(n2, "linear")
    act = _only_user(lin_gu.output, "fused_bias_act") if lin_gu is not None else None
    lin_down = _only_user(act.output, "linear") if act is not None else None
    if (lin_down is None or act.operand("bias") is not None
            or act.attrs["act_method"] != "swiglu" or eps2 != eps):
        return None
    ops += [lin_gu, act, lin_down]
    return lin_gu, lin_down


def match_layer(bma: Op) -> Layer | None:
    """The decoder layer around one block_multihead_attention op, or None."""
    if bma.operand("alibi_slopes") is not None:
        return None  # fused_blha_layer derives the slopes from num_heads: it has no such operand
    ops: list[Op] = [bma]
    qkv = bma.operand("qkv")
    lin_qkv = _linear(qkv, ops)
    if lin_qkv is None or len(qkv.users) != 1 or len(lin_qkv.operand("x").users) != 1:
        return None
    norm1 = _norm_in(lin_qkv.operand("x"), ops)
    if norm1 is None or not all(_is_max_len(bma, lens) for lens in MAX_LEN_OF):
        return None
    x, residual, w_in, eps, s1 = norm1
    lin_o = _only_user(bma.result("out"), "linear")
    if lin_o is None:
        return None
    ops.append(lin_o)
    norm2 = _norm_post(lin_o.output, s1, ops)
    if norm2 is None:
        return None
    w_post, eps2, n2, s2 = norm2
    ffn = _ffn(n2, eps, eps2, ops)
    if ffn is None:
        return None
    lin_gu, lin_down = ffn
    lins = [lin_qkv, lin_o, lin_gu, lin_down]
    if len({op.attrs["transpose_w"] for op in lins}) != 1 or any(
            op.operand("bias") is not None for op in lins):
        return None
    if any(u not in set(ops) for u in s1.users):
        return None
    weights = dict(norm_w=w_in, qkv_w=lin_qkv.operand("w"), out_w=lin_o.operand("w"),
                   post_norm_w=w_post, gate_up_w=lin_gu.operand("w"), down_w=lin_down.operand("w"))
    return Layer(x, residual, weights, eps, lin_qkv.attrs["transpose_w"], lin_down.output, s2,
                 bma, ops)


def fuse(g: Graph, layer: Layer, flag: int, operands: dict[str, Value],
         results: dict[str, Value], before: Op, ops: list[Op]) -> bool:
    """Replace a matched layer by one fused_blha_layer placed before `before`; False (and
    nothing changed) when a use of a replaced result outside the layer comes before it.

    `operands` adds x, residual (and max_len) to the layer's weights and paged-attention
    operands; `results` maps the fused op's result names to the values they replace."""
    if not all_users_after(results.values(), before, set(ops)):
        return False
    bma = layer.anchor
    named = dict(operands, **layer.weights, **{n: bma.operand(n) for n in PAGED_OPERANDS})
    attrs = dict({k: bma.attrs[k] for k in ATTN_ATTRS}, flag=flag, epsilon=layer.epsilon,
                 transpose_w=layer.transpose_w)
    op = make_op(g, "fused_blha_layer", signature("fused_blha_layer").operands.positional(named),
                 attrs)
    g.insert_before(before, [op])
    for name, old in results.items():
        g.replace_all_uses(old, op.result(name))
    erase_dead(g, ops)
    return True


def _layer_results(layer: Layer, out: Value, residual_out: Value | None) -> dict[str, Value]:
    caches = {"cache_k_out": layer.anchor.result("cache_k_out"),
              "cache_v_out": layer.anchor.result("cache_v_out")}
    if residual_out is None:
        return dict(out=out, **caches)
    return dict(out=out, residual_out=residual_out, **caches)


def _begin(g: Graph, layer: Layer) -> bool:
    emb = layer.x.producer
    if layer.residual is not None or emb is None or emb.kind != "embedding":
        return False
    if any(u not in layer.inside for u in layer.x.users):
        return False
    return fuse(g, layer, FLAG_BEGIN,
                {"x": emb.operand("ids"), "residual": emb.operand("table")},
                _layer_results(layer, layer.out, layer.residual_out),
                layer.ops[-1], layer.ops + [emb])


def _end_tail(layer: Layer) -> tuple[Op, Op] | None:
    """(final residual add, rebuild_padding) after the last layer, or None."""
    outside = [u for u in layer.residual_out.users if u not in layer.inside]
    if layer.residual is None or len(layer.out.users) != 1 or outside != list(layer.out.users):
        return None
    add = outside[0]
    if add.kind == "fused_bias_residual_layernorm":
        if (add.operand("norm_weight") is not None or add.operand("norm_bias") is not None
                or add.attrs["residual_alpha"] != 1.0 or add.result("residual_out").users):
            return None
    elif add.kind != "add":
        return None
    rebuild = _only_user(add.result("out"), "rebuild_padding")
    bma = layer.anchor
    if rebuild is None or any(rebuild.operand(n) is not bma.operand(n) for n in
                              ("cum_offsets", "seq_lens_decoder", "seq_lens_encoder")):
        return None
    return add, rebuild


def _end(g: Graph, layer: Layer) -> bool:
    tail = _end_tail(layer)
    if tail is None:
        return False
    add, rebuild = tail
    return fuse(g, layer, FLAG_END,
                {"x": layer.x, "residual": layer.residual,
                 "max_len": rebuild.operand("max_len")},
                _layer_results(layer, rebuild.output, None), rebuild, layer.ops + [add, rebuild])


def _middle(g: Graph, layer: Layer) -> bool:
    if layer.residual is None or _end_tail(layer) is not None:
        return False
    return fuse(g, layer, FLAG_MIDDLE, {"x": layer.x, "residual": layer.residual},
                _layer_results(layer, layer.out, layer.residual_out), layer.ops[-1], layer.ops)


def fuse_layers(variant: Callable[[Graph, Layer], bool]) -> Callable[[Graph], int]:
    """A pass body: match each anchor in program order (after the previous fusions) and
    try `variant` on it."""

    def run(g: Graph) -> int:
        n = 0
        for bma in [op for op in g.ops if op.kind == "block_multihead_attention"]:
            layer = match_layer(bma)
            n += bool(layer is not None and variant(g, layer))
        g.renumber()
        return n

    return run


def _first_layer(g: Graph, ctx: PassContext) -> int:
    return 1 if per_layer_or_count(ctx, g, "block_multihead_attention") else 0


def _last_layer(g: Graph, ctx: PassContext) -> int:
    n = num_layers(ctx)
    if n is not None:
        return 1 if n > 1 else 0
    return 1 if count(g, "block_multihead_attention") and count(g, "rebuild_padding") else 0


def _middle_layers(g: Graph, ctx: PassContext) -> int:
    n = num_layers(ctx)
    if n is not None:
        return max(n - 2, 0)
    fused = {op.attrs["flag"] for op in g.ops if op.kind == "fused_blha_layer"}
    unfused_first = FLAG_BEGIN not in fused
    unfused_last = FLAG_END not in fused and count(g, "rebuild_padding") > 0  # as _last_layer
    return max(count(g, "block_multihead_attention") - unfused_first - unfused_last, 0)


define_pass("llama_fuse_attention_layer_begin", "embedding + the first decoder layer → "
            "fused_blha_layer{flag=1}.", fuse_layers(_begin), expected=_first_layer)
define_pass("llama_fuse_attention_layer_end", "Last decoder layer + final residual add + "
            "rebuild_padding → fused_blha_layer{flag=2}.", fuse_layers(_end), expected=_last_layer)
define_pass("llama_fuse_attention_layer", "A whole middle decoder layer (norms, qkv, attention, o, "
            "ffn) → fused_blha_layer{flag=0}.", fuse_layers(_middle), expected=_middle_layers)
