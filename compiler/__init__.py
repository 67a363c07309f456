"""llmc.compiler: the graph IR, its text format, the op registry, the verifier,
the pattern rewriter and the pass manager. Imports nothing else from llmc."""

from .builder import Builder
from .errors import IRSyntaxError, LlmcError, PassError, VerifyError
from .ir import DType, Graph, Op, TensorType, Value
from .text import parse, parse_file, print_graph

__all__ = [
    "Builder", "DType", "Graph", "IRSyntaxError", "LlmcError", "Op", "PassError", "TensorType",
    "Value", "VerifyError", "parse", "parse_file", "print_graph",
]
