"""Paddle lowerings of the core ops (compiler/ops/arith.py, tensor.py): one Paddle call,
or a short chain of them, per llmc op."""

from __future__ import annotations

from llmc.compiler.ops import get_op

from .lower import PADDLE_DTYPES, Lowering, LoweringError, lowers, operand_reader

BINARY = {"add": "add", "mul": "multiply", "sub": "subtract", "maximum": "maximum",
          "minimum": "minimum", "less": "less_than", "equal": "equal"}
UNARY = {"neg": "neg", "exp": "exp", "sqrt": "sqrt", "rsqrt": "rsqrt", "tanh": "tanh",
         "sin": "sin", "cos": "cos", "sigmoid": "sigmoid"}
REDUCE = {"reduce_sum": "sum", "reduce_mean": "mean", "reduce_max": "max"}


def unary_step(op, ctx: Lowering, fn):
    """A step applying `fn` to op's operand `x`."""
    x = op.operand("x")
    return lambda env: [fn(env[x])]


@lowers(*BINARY)
def _binary(op, ctx):
    fn = getattr(ctx.paddle, BINARY[op.kind])
    args = operand_reader(op, "lhs", "rhs")
    return lambda env: [fn(*args(env))]


@lowers("div")
def _div(op, ctx):
    fn = ctx.paddle.divide if op.outputs[0].type.dtype.is_float else ctx.paddle.floor_divide
    args = operand_reader(op, "lhs", "rhs")
    return lambda env: [fn(*args(env))]


@lowers(*UNARY)
def _unary(op, ctx):
    return unary_step(op, ctx, getattr(ctx.paddle, UNARY[op.kind]))


@lowers("silu")
def _silu(op, ctx):
    return unary_step(op, ctx, ctx.F.silu)


@lowers("pow")
def _pow(op, ctx):
    e = op.attrs["exponent"]
    return unary_step(op, ctx, lambda x: ctx.paddle.pow(x, e))


@lowers("gelu")
def _gelu(op, ctx):
    tanh = op.attrs["approximate"] == "tanh"
    return unary_step(op, ctx, lambda x: ctx.F.gelu(x, approximate=tanh))


@lowers("swiglu")
def _swiglu(op, ctx):
    args = operand_reader(op, "x", "y")
    if ctx.kernels.swiglu:
        ctx.kernels.note("swiglu", "paddle.nn.functional.swiglu")
        return lambda env: [ctx.F.swiglu(*args(env))]
    ctx.kernels.note("swiglu", "composite silu(gate) * up")

    def composite(env):
        x, y = args(env)
        if y is None:
            x, y = ctx.paddle.chunk(x, 2, axis=-1)
        return [ctx.F.silu(x) * y]

    return composite


@lowers("where")
def _where(op, ctx):
    args = operand_reader(op, "cond", "a", "b")
    return lambda env: [ctx.paddle.where(*args(env))]


@lowers(*REDUCE)
def _reduce(op, ctx):
    axes = list(op.attrs["axes"]) or None
    keep = op.attrs["keepdims"]
    fn = getattr(ctx.paddle, REDUCE[op.kind])
    if op.kind == "reduce_sum":  # paddle.sum widens int32 to int64 unless told
        dtype = PADDLE_DTYPES[op.outputs[0].type.dtype]
        return unary_step(op, ctx, lambda x: fn(x, axis=axes, keepdim=keep, dtype=dtype))
    return unary_step(op, ctx, lambda x: fn(x, axis=axes, keepdim=keep))


@lowers("argmax")
def _argmax(op, ctx):
    axis, keep = op.attrs["axis"], op.attrs["keepdims"]
    return unary_step(op, ctx, lambda x: ctx.paddle.argmax(x, axis=axis, keepdim=keep))


@lowers("cumsum")
def _cumsum(op, ctx):
    axis, exclusive = op.attrs["axis"], op.attrs["exclusive"]
    dtype = PADDLE_DTYPES[op.outputs[0].type.dtype]

    def run(x):
        y = ctx.paddle.cumsum(x, axis=axis, dtype=dtype)
        return y - x if exclusive else y

    return unary_step(op, ctx, run)


@lowers("softmax")
def _softmax(op, ctx):
    axis = op.attrs["axis"]
    return unary_step(op, ctx, lambda x: ctx.F.softmax(x, axis=axis))


@lowers("matmul")
def _matmul(op, ctx):
    ta, tb = op.attrs["transpose_a"], op.attrs["transpose_b"]
    args = operand_reader(op, "a", "b")
    return lambda env: [ctx.paddle.matmul(*args(env), transpose_x=ta, transpose_y=tb)]


@lowers("linear")
def _linear(op, ctx):
    tw = op.attrs["transpose_w"]
    args = operand_reader(op, "x", "w", "bias")

    def run(env):
        x, w, bias = args(env)
        y = ctx.paddle.matmul(x, w, transpose_y=tw)
        return [y if bias is None else y + bias]

    return run


@lowers("reshape")
def _reshape(op, ctx):
    shape = list(op.attrs["shape"])  # 0 keeps a dim, -1 is inferred: Paddle's own rules
    return unary_step(op, ctx, lambda x: ctx.paddle.reshape(x, shape))


@lowers("transpose")
def _transpose(op, ctx):
    perm = list(op.attrs["perm"])
    return unary_step(op, ctx, lambda x: ctx.paddle.transpose(x, perm))


@lowers("concat")
def _concat(op, ctx):
    xs, axis = op.operands("xs"), op.attrs["axis"]
    return lambda env: [ctx.paddle.concat([env[v] for v in xs], axis=axis)]


@lowers("split")
def _split(op, ctx):
    sizes, axis = list(op.attrs["sizes"]), op.attrs["axis"]
    x = op.operand("x")
    return lambda env: list(ctx.paddle.split(env[x], sizes, axis=axis))


@lowers("slice")
def _slice(op, ctx):
    a = op.attrs
    steps = a["steps"] or (1,) * len(a["axes"])
    rank = op.operand("x").type.rank
    if any(s < 0 for s in steps):
        raise LoweringError("op 'slice' with a negative step has no Paddle lowering")

    def run(x):
        starts, ends = [], []
        for ax, s, e in zip(a["axes"], a["starts"], a["ends"]):
            lo, hi, _ = slice(s, e).indices(x.shape[ax])
            starts.append(lo)
            ends.append(max(hi, lo))
        axes = [ax % rank for ax in a["axes"]]
        return ctx.paddle.strided_slice(x, axes, starts, ends, list(steps))

    return unary_step(op, ctx, run)


@lowers("gather")
def _gather(op, ctx):
    axis = op.attrs["axis"] % op.operand("x").type.rank
    x = operand_reader(op, "x", "indices")

    def run(env):
        t, i = x(env)
        out = ctx.paddle.gather(t, i.reshape([-1]), axis=axis)
        return [out.reshape(t.shape[:axis] + i.shape + t.shape[axis + 1:])]

    return run


@lowers("embedding")
def _embedding(op, ctx):
    args = operand_reader(op, "ids", "table")
    return lambda env: [ctx.F.embedding(*args(env))]


@lowers("cast")
def _cast(op, ctx):
    dtype = PADDLE_DTYPES[op.attrs["dtype"]]
    return unary_step(op, ctx, lambda x: ctx.paddle.cast(x, dtype))


@lowers("constant", "arange")
def _static(op, ctx):
    (arr,) = get_op(op.kind).run([], op.attrs)
    t = ctx.const(arr)
    return lambda env: [t]


@lowers("dim_size")
def _dim_size(op, ctx):
    axis = op.attrs["axis"]
    return unary_step(op, ctx, lambda x: ctx.paddle.full([], x.shape[axis], "int64"))


@lowers("seq_index")
def _seq_index(op, ctx):
    axis = op.attrs["axis"]
    return unary_step(op, ctx, lambda x: ctx.paddle.arange(x.shape[axis], dtype="int64"))


@lowers("unsqueeze")
def _unsqueeze(op, ctx):
    rank = op.operand("x").type.rank + len(op.attrs["axes"])
    axes = sorted(a % rank for a in op.attrs["axes"])  # inserted in order = output positions
    return unary_step(op, ctx, lambda x: ctx.paddle.unsqueeze(x, axes))
