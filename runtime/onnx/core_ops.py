"""ONNX lowerings of the core ops (compiler/ops/arith.py, tensor.py): one standard ONNX
op, or a short chain of them, per llmc op."""

from __future__ import annotations

from .lower import ONNX_DTYPES, Lowering, LoweringError, lowers

BINARY = {"add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div", "maximum": "Max",
          "minimum": "Min", "less": "Less", "equal": "Equal"}
UNARY = {"neg": "Neg", "exp": "Exp", "sqrt": "Sqrt", "tanh": "Tanh", "sin": "Sin", "cos": "Cos",
         "sigmoid": "Sigmoid"}
REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax"}


def ins(ctx: Lowering, op) -> list[str]:
    """The ONNX names of all of op's operands."""
    return [ctx.tensor(v) for v in op.inputs]


@lowers(*BINARY)
def _binary(ctx, op, outs):
    if op.kind == "div" and not op.outputs[0].type.dtype.is_float:
        raise LoweringError("op 'div' on integers (floor division) has no ONNX lowering")
    ctx.node(BINARY[op.kind], ins(ctx, op), outs)


@lowers(*UNARY)
def _unary(ctx, op, outs):
    ctx.node(UNARY[op.kind], ins(ctx, op), outs)


@lowers("rsqrt")
def _rsqrt(ctx, op, outs):
    ctx.node("Reciprocal", [ctx.one("Sqrt", ins(ctx, op))], outs)


@lowers("silu")
def _silu(ctx, op, outs):
    x = ctx.tensor(op.inputs[0])
    ctx.node("Mul", [x, ctx.one("Sigmoid", [x])], outs)


@lowers("pow")
def _pow_(ctx, op, outs):
    ctx.node("Pow", [ctx.tensor(op.inputs[0]), ctx.scalar(op.attrs["exponent"])], outs)


@lowers("gelu")
def _gelu(ctx, op, outs):
    ctx.node("Gelu", ins(ctx, op), outs, approximate=op.attrs["approximate"])


@lowers("swiglu")
def _swiglu(ctx, op, outs):
    if len(op.inputs) == 2:
        g, u = ins(ctx, op)
    else:
        g, u = ctx.node("Split", [ctx.tensor(op.inputs[0])], 2, axis=-1, num_outputs=2)
    ctx.node("Mul", [ctx.one("Mul", [g, ctx.one("Sigmoid", [g])]), u], outs)


@lowers("where")
def _where(ctx, op, outs):
    ctx.node("Where", ins(ctx, op), outs)


@lowers(*REDUCE)
def _reduce(ctx, op, outs):
    axes = op.attrs["axes"]
    args = [ctx.tensor(op.inputs[0])] + ([ctx.ints(*axes)] if axes else [])
    ctx.node(REDUCE[op.kind], args, outs, keepdims=int(op.attrs["keepdims"]))


@lowers("argmax")
def _argmax(ctx, op, outs):
    ctx.node("ArgMax", ins(ctx, op), outs, axis=op.attrs["axis"],
             keepdims=int(op.attrs["keepdims"]), select_last_index=0)


@lowers("cumsum")
def _cumsum(ctx, op, outs):
    ctx.node("CumSum", [ctx.tensor(op.inputs[0]), ctx.ints(op.attrs["axis"])], outs,
             exclusive=int(op.attrs["exclusive"]))


@lowers("softmax")
def _softmax(ctx, op, outs):
    ctx.node("Softmax", ins(ctx, op), outs, axis=op.attrs["axis"])


def swap_last(ctx: Lowering, x: str, rank: int) -> str:
    """x with its last two dims swapped."""
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.one("Transpose", [x], perm=perm)


@lowers("matmul")
def _matmul(ctx, op, outs):
    a, b = ins(ctx, op)
    if op.attrs["transpose_a"]:
        a = swap_last(ctx, a, op.inputs[0].type.rank)
    if op.attrs["transpose_b"]:
        b = swap_last(ctx, b, op.inputs[1].type.rank)
    ctx.node("MatMul", [a, b], outs)


@lowers("linear")
def _linear(ctx, op, outs):
    x, w = op.inputs[0], op.inputs[1]
    tw = op.attrs["transpose_w"]
    if w in ctx.static:
        wn = ctx.matmul_weight(w, tw)
    else:
        wn = swap_last(ctx, ctx.tensor(w), 2) if tw else ctx.tensor(w)
    if len(op.inputs) == 2:
        ctx.node("MatMul", [ctx.tensor(x), wn], outs)
        return
    ctx.node("Add", [ctx.one("MatMul", [ctx.tensor(x), wn]), ctx.tensor(op.inputs[2])], outs)


@lowers("l2_normalize")
def _l2_normalize(ctx, op, outs):
    x = ctx.tensor(op.inputs[0])
    n = ctx.one("ReduceL2", [x, ctx.ints(op.attrs["axis"])], keepdims=1)
    if op.attrs["epsilon"]:
        n = ctx.one("Max", [n, ctx.scalar(op.attrs["epsilon"])])
    ctx.node("Div", [x, n], outs)


@lowers("layer_norm")
def _layer_norm(ctx, op, outs):
    ctx.node("LayerNormalization", ins(ctx, op), outs, axis=-1, epsilon=op.attrs["epsilon"])


@lowers("reshape")
def _reshape(ctx, op, outs):
    x, shape = op.inputs[0], op.attrs["shape"]
    flat = ctx.memo.get(("flat3", x))  # x is a view of this [b, seq, heads * d] tensor
    if flat is not None and shape[:2] == (0, 0) and len(shape) == 3 and x.type.rank == 4:
        ctx.node("Identity", [flat], outs)
        return
    ctx.node("Reshape", [ctx.tensor(x), ctx.ints(*shape)], outs)


@lowers("transpose")
def _transpose(ctx, op, outs):
    ctx.node("Transpose", ins(ctx, op), outs, perm=list(op.attrs["perm"]))


@lowers("concat")
def _concat(ctx, op, outs):
    ctx.node("Concat", ins(ctx, op), outs, axis=op.attrs["axis"])


@lowers("split")
def _split(ctx, op, outs):
    ctx.node("Split", [ctx.tensor(op.inputs[0]), ctx.ints(*op.attrs["sizes"])], outs,
             axis=op.attrs["axis"])


@lowers("slice")
def _slice_(ctx, op, outs):
    a = op.attrs
    args = [ctx.tensor(op.inputs[0]), ctx.ints(*a["starts"]), ctx.ints(*a["ends"]),
            ctx.ints(*a["axes"])]
    if a["steps"]:
        args.append(ctx.ints(*a["steps"]))
    ctx.node("Slice", args, outs)


@lowers("gather")
def _gather(ctx, op, outs):
    ctx.node("Gather", ins(ctx, op), outs, axis=op.attrs["axis"])


@lowers("embedding")
def _embedding(ctx, op, outs):
    ids, table = op.inputs
    ctx.node("Gather", [ctx.tensor(table), ctx.tensor(ids)], outs, axis=0)


@lowers("cast")
def _cast(ctx, op, outs):
    ctx.node("Cast", ins(ctx, op), outs, to=ONNX_DTYPES[op.attrs["dtype"]])


@lowers("unsqueeze")
def _unsqueeze(ctx, op, outs):
    ctx.node("Unsqueeze", [ctx.tensor(op.inputs[0]), ctx.ints(*op.attrs["axes"])], outs)


def dim_of(ctx: Lowering, x: str, axis: int) -> str:
    """Dim `axis` of tensor `x` as an i64 [1] tensor (memoized per tensor and axis)."""
    key = ("dim", x, axis)
    if key not in ctx.memo:
        end = {"end": axis + 1} if axis != -1 else {}
        ctx.memo[key] = ctx.one("Shape", [x], start=axis, **end)
    return ctx.memo[key]


@lowers("dim_size")
def _dim_size(ctx, op, outs):
    x = op.inputs[0]
    axis = op.attrs["axis"] % x.type.rank
    ctx.node("Squeeze", [dim_of(ctx, ctx.tensor(x), axis), ctx.ints(0)], outs)


@lowers("seq_index")
def _seq_index(ctx, op, outs):
    x = op.inputs[0]
    axis = op.attrs["axis"] % x.type.rank
    n = ctx.one("Squeeze", [dim_of(ctx, ctx.tensor(x), axis), ctx.ints(0)])
    ctx.node("Range", [ctx.scalar(0, "int64"), n, ctx.scalar(1, "int64")], outs)

