"""MC2 fused ops: a matmul fused with the collective before or after it, as Ascend's
MC2 kernels (and PyTorch's async-TP) overlap the two. Each group kernel is the chain it
replaces, run through the unfused ops' reference kernels."""

from __future__ import annotations

from ..ir import TensorType
from .collective import defcollective, run_group
from .registry import AttrSpec, get_op

_LINEAR = {"transpose_w": AttrSpec("bool", True)}
_AXIS = {"axis": AttrSpec("int", 0)}


def _linear_type(x: TensorType, w: TensorType, transpose_w: bool) -> TensorType:
    op = get_op("linear")
    return op.infer_types([x, w], op.normalize_attrs({"transpose_w": transpose_w}))[0]


def _linear_each(per_rank, transpose_w):
    return [[run_group("linear", [args], transpose_w=transpose_w)[0][0]] for args in per_rank]


def _matmul_all_reduce(per_rank, attrs):
    """all_reduce(linear(x, w)): a row-parallel matmul and the sum of its partial results."""
    partial = _linear_each(per_rank, attrs["transpose_w"])
    return run_group("all_reduce", partial, group=attrs["group"], nranks=attrs["nranks"])


def _all_gather_matmul(per_rank, attrs):
    """linear(all_gather(x, axis), w): gather the sequence-parallel input, then matmul."""
    xs = run_group("all_gather", [[args[0]] for args in per_rank], axis=attrs["axis"],
                   group=attrs["group"], nranks=attrs["nranks"])
    return _linear_each([[x[0], args[1]] for x, args in zip(xs, per_rank)],
                        attrs["transpose_w"])


def _matmul_reduce_scatter(per_rank, attrs):
    """reduce_scatter(linear(x, w), axis): a row-parallel matmul whose sum is scattered."""
    partial = _linear_each(per_rank, attrs["transpose_w"])
    return run_group("reduce_scatter", partial, axis=attrs["axis"], group=attrs["group"],
                     nranks=attrs["nranks"])


def _mar_infer(x, w, transpose_w, group, nranks):
    return _linear_type(x, w, transpose_w)


def _agm_infer(x, w, axis, transpose_w, group, nranks):
    g = get_op("all_gather")
    gathered = g.infer_types([x], g.normalize_attrs({"axis": axis, "nranks": nranks}))[0]
    return _linear_type(gathered, w, transpose_w)


def _mrs_infer(x, w, axis, transpose_w, group, nranks):
    rs = get_op("reduce_scatter")
    y = _linear_type(x, w, transpose_w)
    return rs.infer_types([y], rs.normalize_attrs({"axis": axis, "nranks": nranks}))[0]


defcollective("matmul_all_reduce", ("x", "w"), _matmul_all_reduce, infer=_mar_infer,
              attrs=_LINEAR)
defcollective("all_gather_matmul", ("x", "w"), _all_gather_matmul, infer=_agm_infer,
              attrs={**_AXIS, **_LINEAR})
defcollective("matmul_reduce_scatter", ("x", "w"), _matmul_reduce_scatter, infer=_mrs_infer,
              attrs={**_AXIS, **_LINEAR})
