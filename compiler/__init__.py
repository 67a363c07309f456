"""llmc.compiler: the graph IR, its text format, the op registry, the verifier,
the pattern rewriter and the pass manager. Imports nothing else from llmc.

The names below are loaded on first use, so importing `llmc.compiler.errors`
(as the CLI does at start-up) does not pull in numpy or the op registry."""

from importlib import import_module

_EXPORTS = {
    "Builder": "builder", "DType": "ir", "Graph": "ir", "Op": "ir", "TensorType": "ir",
    "Value": "ir", "IRSyntaxError": "errors", "LlmcError": "errors", "PassError": "errors",
    "VerifyError": "errors", "parse": "text", "parse_file": "text", "print_graph": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
