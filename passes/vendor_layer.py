"""The vendor's whole-layer fusions on the inference form → `fused_blha_layer`:
llama_fuse_attention_layer_begin (embedding + layer 0, flag 1),
llama_fuse_attention_layer_end (last layer + residual add + rebuild_padding, flag 2),
llama_fuse_attention_layer (every other layer, flag 0).

A layer has four results and two spellings of each norm (`fused_rms_norm` with a
residual, or `add` + `rms_norm` after remove_residual_in_rms_norm), so it is matched
by a walk from its `block_multihead_attention` anchor rather than one pattern tree:
one walk per anchor keeps the pass linear in the number of layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmc.compiler.builder import make_op
from llmc.compiler.ir import Graph, Op, Value
from llmc.compiler.ops.fused import ATTN_ATTRS, FLAG_BEGIN, FLAG_END, FLAG_MIDDLE
from llmc.compiler.passmanager import Pass, PassContext, register_pass
from llmc.compiler.rewrite import erase_dead

from .fuse_common import all_users_after, count, num_layers, per_layer_or_count


@dataclass
class Layer:
    """One matched decoder layer: operands, results and the ops it covers."""

    x: Value
    residual: Value | None
    weights: list[Value]  # norm, qkv, out, post_norm, gate_up, down
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
    if op is None or n is not op.outputs[0]:
        return None
    ops.append(op)
    if op.kind == "fused_rms_norm":
        res = op.inputs[2] if len(op.inputs) == 3 else None
        return op.inputs[0], res, op.inputs[1], op.attrs["epsilon"], op.outputs[1]
    if op.kind != "rms_norm":
        return None
    s = op.inputs[0]
    add = s.producer
    if add is not None and add.kind == "add" and add.inputs[0].type == add.inputs[1].type == s.type:
        ops.append(add)
        return add.inputs[0], add.inputs[1], op.inputs[1], op.attrs["epsilon"], s
    return s, None, op.inputs[1], op.attrs["epsilon"], s


def _norm_post(o: Value, s1: Value, ops: list[Op]):
    """(w, eps, normed, sum) for the post-attention norm adding s1 to o, or None."""
    users = list(o.users)
    if len(users) != 1:
        return None
    op = users[0]
    if (
        op.kind == "fused_rms_norm"
        and len(op.inputs) == 3
        and op.inputs[0] is o
        and op.inputs[2] is s1
    ):
        ops.append(op)
        return op.inputs[1], op.attrs["epsilon"], op.outputs[0], op.outputs[1]
    if op.kind == "add" and set(op.inputs) == {o, s1}:
        norm = next(
            (u for u in op.output.users if u.kind == "rms_norm" and u.inputs[0] is op.output), None
        )
        if norm is None or len(norm.output.users) != 1:
            return None
        ops += [op, norm]
        return norm.inputs[1], norm.attrs["epsilon"], norm.output, op.output
    return None


def _is_max_len(v: Value, lens: Value) -> bool:
    """v holds max(lens) as i32[1]: blha_get_max_len's output or its decomposition."""
    op = v.producer
    if op is None:
        return False
    if op.kind == "blha_get_max_len":
        return op.inputs[op.outputs.index(v)] is lens
    if op.kind == "maximum":
        red = op.inputs[0].producer
        return red is not None and red.kind == "reduce_max" and red.inputs[0] is lens
    return False


def _linear(v: Value, ops: list[Op]) -> Op | None:
    op = v.producer
    if op is None or op.kind != "linear" or len(op.inputs) != 2:
        return None
    ops.append(op)
    return op


def match_layer(bma: Op) -> Layer | None:
    """The decoder layer around one block_multihead_attention op, or None."""
    ops: list[Op] = [bma]
    lin_qkv = _linear(bma.inputs[0], ops)
    if lin_qkv is None or len(bma.inputs[0].users) != 1 or len(lin_qkv.inputs[0].users) != 1:
        return None
    norm1 = _norm_in(lin_qkv.inputs[0], ops)
    enc, dec = bma.inputs[3], bma.inputs[4]
    if norm1 is None or not (_is_max_len(bma.inputs[11], enc) and _is_max_len(bma.inputs[12], dec)):
        return None
    x, residual, w_in, eps, s1 = norm1
    lin_o = _only_user(bma.outputs[0], "linear")
    if lin_o is None:
        return None
    ops.append(lin_o)
    norm2 = _norm_post(lin_o.output, s1, ops)
    if norm2 is None:
        return None
    w_post, eps2, n2, s2 = norm2
    lin_gu = _only_user(n2, "linear")
    act = _only_user(lin_gu.output, "fused_bias_act") if lin_gu is not None else None
    lin_down = _only_user(act.output, "linear") if act is not None else None
    if (
        lin_down is None
        or len(act.inputs) != 1
        or act.attrs["act_method"] != "swiglu"
        or eps2 != eps
    ):
        return None
    ops += [lin_gu, act, lin_down]
    lins = [lin_qkv, lin_o, lin_gu, lin_down]
    if len({op.attrs["transpose_w"] for op in lins}) != 1 or any(
        len(op.inputs) != 2 for op in lins
    ):
        return None
    inside = set(ops)
    if any(u not in inside for u in s1.users):
        return None
    return Layer(
        x,
        residual,
        [w_in, lin_qkv.inputs[1], lin_o.inputs[1], w_post, lin_gu.inputs[1], lin_down.inputs[1]],
        eps,
        lin_qkv.attrs["transpose_w"],
        lin_down.output,
        s2,
        bma,
        ops,
    )


def fuse(
    g: Graph,
    layer: Layer,
    flag: int,
    x: Value,
    residual: Value,
    extra: list[Value],
    results: list[Value],
    before: Op,
    ops: list[Op],
) -> bool:
    """Replace a matched layer by one fused_blha_layer placed before `before`; False (and
    nothing changed) when a use of a replaced result outside the layer comes before it."""
    if not all_users_after(results, before, set(ops)):
        return False
    bma = layer.anchor
    attrs = {k: bma.attrs[k] for k in ATTN_ATTRS}
    operands = [
        x,
        residual,
        *layer.weights,
        bma.inputs[1],
        bma.inputs[2],
        *bma.inputs[3:11],
        *extra,
    ]
    op = make_op(
        g,
        "fused_blha_layer",
        operands,
        dict(attrs, flag=flag, epsilon=layer.epsilon, transpose_w=layer.transpose_w),
    )
    g.insert_before(before, [op])
    for old, new in zip(results, op.outputs):
        g.replace_all_uses(old, new)
    erase_dead(g, ops)
    return True


def _begin(g: Graph, layer: Layer) -> bool:
    emb = layer.x.producer
    if layer.residual is not None or emb is None or emb.kind != "embedding":
        return False
    if any(u not in layer.inside for u in layer.x.users):
        return False
    return fuse(
        g,
        layer,
        FLAG_BEGIN,
        emb.inputs[0],
        emb.inputs[1],
        [],
        [layer.out, layer.residual_out, *layer.anchor.outputs[1:]],
        layer.ops[-1],
        layer.ops + [emb],
    )


def _end(g: Graph, layer: Layer) -> bool:
    outside = [u for u in layer.residual_out.users if u not in layer.inside]
    if layer.residual is None or len(layer.out.users) != 1 or outside != list(layer.out.users):
        return False
    add = outside[0]
    if add.kind == "fused_bias_residual_layernorm":
        if len(add.inputs) != 2 or add.attrs["residual_alpha"] != 1.0 or add.outputs[1].users:
            return False
    elif add.kind != "add":
        return False
    rebuild = _only_user(add.outputs[0], "rebuild_padding")
    if rebuild is None:
        return False
    bma = layer.anchor
    _, cum, dec, enc, max_len = rebuild.inputs
    if cum is not bma.inputs[7] or dec is not bma.inputs[4] or enc is not bma.inputs[3]:
        return False
    return fuse(
        g,
        layer,
        FLAG_END,
        layer.x,
        layer.residual,
        [max_len],
        [rebuild.output, *bma.outputs[1:]],
        rebuild,
        layer.ops + [add, rebuild],
    )


def _middle(g: Graph, layer: Layer) -> bool:
    if layer.residual is None:
        return False
    return fuse(
        g,
        layer,
        FLAG_MIDDLE,
        layer.x,
        layer.residual,
        [],
        [layer.out, layer.residual_out, *layer.anchor.outputs[1:]],
        layer.ops[-1],
        layer.ops,
    )


class _LayerPass(Pass):
    """Shared driver: match each anchor in program order (after the previous fusions) and
    try the variant on it."""

    def run(self, g: Graph, ctx: PassContext) -> int:
        n = 0
        for bma in [op for op in g.ops if op.kind == "block_multihead_attention"]:
            layer = match_layer(bma)
            n += bool(layer is not None and self.variant(g, layer))
        g.renumber()
        return n


@register_pass
class LlamaFuseAttentionLayerBegin(_LayerPass):
    """embedding + the first decoder layer → fused_blha_layer{flag=1}."""

    name = "llama_fuse_attention_layer_begin"
    variant = staticmethod(_begin)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        return 1 if per_layer_or_count(ctx, g, "block_multihead_attention") else 0


@register_pass
class LlamaFuseAttentionLayerEnd(_LayerPass):
    """Last decoder layer + final residual add + rebuild_padding → fused_blha_layer{flag=2}."""

    name = "llama_fuse_attention_layer_end"
    variant = staticmethod(_end)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        n = num_layers(ctx)
        if n is not None:
            return 1 if n > 1 else 0
        return 1 if count(g, "block_multihead_attention") and count(g, "rebuild_padding") else 0


@register_pass
class LlamaFuseAttentionLayer(_LayerPass):
    """A whole middle decoder layer (norms, qkv, attention, o, ffn) → fused_blha_layer{flag=0}."""

    name = "llama_fuse_attention_layer"
    variant = staticmethod(_middle)

    def expected(self, g: Graph, ctx: PassContext) -> int | None:
        n = num_layers(ctx)
        if n is not None:
            return max(n - 2, 0)
        fused = {op.attrs["flag"] for op in g.ops if op.kind == "fused_blha_layer"}
        return max(
            count(g, "block_multihead_attention")
            - (FLAG_BEGIN not in fused)
            - (FLAG_END not in fused),
            0,
        )
