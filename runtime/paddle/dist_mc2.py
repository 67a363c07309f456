"""The device's fused MC2 kernel for `matmul_all_reduce`, where Paddle exposes one.

paddle-custom-npu (the Ascend plugin) has `paddle_custom_device.npu.fused_mm_allreduce
(x2d, w[in, out], bias, hcom, reduce_op, comm_turn)`: the row-parallel matmul and the
sum over the group's HCCL communicator in one kernel, computation and communication
overlapped (what PaddleNLP's MC2 linears call under FLAGS_NPU_MC2). Its backward is the
plain matmuls: all_reduce's adjoint is the identity. Its `fused_allgather_mm` and
`fused_mm_reduce_scatter` gather/scatter the first axis of the flattened tokens, while
the IR's sequence-parallel ops gather the seq axis of [batch, seq, hidden], so
all_gather_matmul and matmul_reduce_scatter run unfused.
"""

from __future__ import annotations

from typing import Callable


def fused_kernel():
    """paddle_custom_device.npu.fused_mm_allreduce, or None where it is not installed."""
    try:
        import paddle_custom_device
    except ImportError:
        return None
    return getattr(getattr(paddle_custom_device, "npu", None), "fused_mm_allreduce", None)


def comm_name(comm) -> str | None:
    """The HCCL communicator name of the group (None for backends without one)."""
    get = getattr(getattr(comm.group, "process_group", None), "get_comm_name", None)
    return None if get is None else get(comm.world.rank)


def npu_matmul_all_reduce(ctx, comm, transpose_w: bool) -> Callable | None:
    """A function (x, w) → all_reduce(linear(x, w)) on the fused kernel, or None where
    the device, the plugin or the group has none."""
    if comm.world is None or comm.nranks == 1 or ctx.kernels.device.partition(":")[0] != "npu":
        return None
    kernel = fused_kernel()
    hcom = comm_name(comm) if kernel is not None else None
    if hcom is None:
        return None
    from paddle.autograd import PyLayer

    paddle = ctx.paddle

    class FusedMatmulAllReduce(PyLayer):
        @staticmethod
        def forward(pctx, x, w):
            pctx.save_for_backward(x, w)
            w_in_out = w.t() if transpose_w else w
            out = kernel(x.reshape([-1, x.shape[-1]]), w_in_out, bias=None, hcom=hcom,
                         reduce_op="sum", comm_turn=0)
            comm.world.comm.record("matmul_all_reduce", out.numel().item() * out.element_size())
            return out.reshape(list(x.shape[:-1]) + [out.shape[-1]])

        @staticmethod
        def backward(pctx, dy):
            x, w = pctx.saved_tensor()
            dx = paddle.matmul(dy, w, transpose_y=not transpose_w)
            if w.stop_gradient:
                return dx, None
            x2, dy2 = x.reshape([-1, x.shape[-1]]), dy.reshape([-1, dy.shape[-1]])
            dw = (paddle.matmul(dy2, x2, transpose_x=True) if transpose_w
                  else paddle.matmul(x2, dy2, transpose_x=True))
            return dx, dw

    return FusedMatmulAllReduce.apply
