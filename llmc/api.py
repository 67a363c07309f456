"""The Python API behind the CLI: everything `llmc` does is callable from here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import (
    PASSES,
    Instruments,
    PassContext,
    PassManager,
    PassRecord,
    parse_pipeline,
    write_atomic,
)
from llmc.compiler.text import parse, print_graph

__all__ = ["LlmcError", "parse", "print_graph", "run_pipeline", "run_reference", "write_atomic",
           "read_text", "load_arrays", "save_npz", "list_passes", "to_dot"]


def _load_passes() -> None:
    import llmc.passes  # noqa: F401  (registers passes)


def read_text(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise LlmcError(f"{path}: cannot read: {e.strerror}") from None


def run_pipeline(g: Graph, spec: str, instruments: Instruments | None = None,
                 log: Callable[[str], None] | None = None,
                 emit_ir: Callable[[str, str], None] | None = None,
                 ctx: PassContext | None = None) -> list[PassRecord]:
    """Run a pipeline spec (`dce,cse{...}`) on `g` in place; returns the pass records."""
    _load_passes()
    pm = PassManager(parse_pipeline(spec), instruments, log=log, emit_ir=emit_ir)
    return pm.run(g, ctx)


def run_reference(g: Graph, inputs: Mapping[str, np.ndarray],
                  weights: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    from llmc.runtime.reference import run

    _load_passes()
    return run(g, inputs, weights)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays from a .npz or .safetensors file, by name."""
    p = Path(path)
    if not p.exists():
        raise LlmcError(f"{p}: no such file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(p)))
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # corrupt archives raise many types
        raise LlmcError(f"{p}: cannot read arrays: {e}") from None


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def list_passes(target: str | None = None) -> list[dict]:
    _load_passes()
    if target is None:
        return [{"spec": n, "doc": PASSES[n].doc()} for n in sorted(PASSES)]
    from llmc.passes.pipelines import pipeline_for

    return [{"spec": p.spec(), "doc": type(p).doc()} for p in parse_pipeline(pipeline_for(target))]


def to_dot(g: Graph) -> str:
    """The graph in Graphviz DOT: ops as boxes, inputs and params as ellipses."""
    from llmc.compiler.graphviz import to_dot as _dot

    return _dot(g)


# ---- checkpoints: import / inspect (frontends/loader.py) ----------------------


def open_model(model_dir: str | Path, allow_pickle: bool = False):
    """Open a model directory (config + weight headers, no tensor data): a `Checkpoint`."""
    from llmc.frontends.loader import open_checkpoint

    return open_checkpoint(model_dir, allow_pickle=allow_pickle)


def build_model_graph(ckpt, form: str = "full") -> Graph:
    """The `full` (every position's logits) or `inference` graph of an opened checkpoint."""
    from llmc.compile import build_graph

    return build_graph(ckpt.config, ckpt.naming, form, last_token_only=False)


def param_shapes(g: Graph) -> dict[str, tuple]:
    """Each graph parameter's name and static shape."""
    return {name: tuple(v.type.shape) for name, v in g.params.items()}


def inspect_model(model_dir: str | Path, allow_pickle: bool = False, form: str = "full",
                  progress: Callable[[str], None] | None = None, ckpt=None,
                  graph: Graph | None = None) -> dict:
    """Summary of a model directory, its weights checked against the graph (nothing written)."""
    ckpt = ckpt or open_model(model_dir, allow_pickle)
    g = graph or build_model_graph(ckpt, form)
    expected = param_shapes(g)
    if ckpt.weights.backed:
        ckpt.validate(expected, progress)
    return dict(ckpt.summary(expected), graph_params=len(expected),
                weights="checked" if ckpt.weights.backed else "none (config only)")


def import_model(model_dir: str | Path, output: str | Path, form: str = "full",
                 allow_pickle: bool = False,
                 progress: Callable[[str], None] | None = None, ckpt=None) -> dict:
    """Write the model's IR text (params by name) to `output` atomically; returns the summary."""
    ckpt = ckpt or open_model(model_dir, allow_pickle)
    g = build_model_graph(ckpt, form)
    summary = inspect_model(model_dir, form=form, progress=progress, ckpt=ckpt, graph=g)
    if not Path(output).parent.is_dir():
        raise LlmcError(f"{output}: the output directory does not exist")
    write_atomic(output, print_graph(g))
    return dict(summary, output=str(output), form=form, ops=len(g))
