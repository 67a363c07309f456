"""ONNX lowering, export and the ONNX Runtime generation backend."""

from . import core_ops, nn_ops  # noqa: F401  (fill the lowering table)
from .lower import LOWERINGS, LoweringError, lower_graph

__all__ = ["LOWERINGS", "LoweringError", "lower_graph"]
