"""The Python API behind the CLI: everything `llmc` does is callable from here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import write_atomic
from llmc.compiler.text import parse, print_graph
from llmc.frontends.loader import Checkpoint, open_checkpoint
from llmc.runtime.reference import run as _run_reference

from .compile import Progress, build_graph, validate_weights
from .pipeline import list_passes, run_pipeline

__all__ = ["LlmcError", "parse", "print_graph", "run_pipeline", "run_reference", "write_atomic",
           "read_text", "load_arrays", "save_npz", "list_passes", "to_dot", "open_model",
           "build_model_graph", "param_shapes", "inspect_model", "import_model"]


def read_text(path: str | Path) -> bytes:
    """A file's bytes, or one error line naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise LlmcError(f"{path}: cannot read: {e.strerror}") from None


def run_reference(g: Graph, inputs: Mapping[str, np.ndarray],
                  weights: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run `g` on the numpy reference interpreter; its outputs in order."""
    return _run_reference(g, inputs, weights)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays from a .npz or .safetensors file, by name."""
    p = Path(path)
    if not p.exists():
        raise LlmcError(f"{p}: no such file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.numpy import load_file  # only this format needs it

            return dict(load_file(str(p)))
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # corrupt archives raise many types
        raise LlmcError(f"{p}: cannot read arrays: {e}") from None


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays by name to a .npz file, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def to_dot(g: Graph) -> str:
    """The graph in Graphviz DOT: ops as boxes, inputs and params as ellipses."""
    from llmc.compiler.graphviz import to_dot as dot  # networkx: only `--emit dot` pays for it

    return dot(g)


# ---- checkpoints: import / inspect (frontends/loader.py) ----------------------


def open_model(model_dir: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """Open a model directory, or a config .json alone (config + weight headers, no tensor
    data): a `Checkpoint`."""
    return open_checkpoint(model_dir, allow_pickle=allow_pickle)


def build_model_graph(ckpt: Checkpoint, form: str = "full") -> Graph:
    """The `full` (every position's logits) or `inference` graph of an opened checkpoint."""
    return build_graph(ckpt.config, ckpt.naming, form, last_token_only=False)


def param_shapes(g: Graph) -> dict[str, tuple]:
    """Each graph parameter's name and static shape."""
    return {name: tuple(v.type.shape) for name, v in g.params.items()}


def inspect_model(model_dir: str | Path, allow_pickle: bool = False, form: str = "full",
                  progress: Progress | None = None, ckpt: Checkpoint | None = None,
                  graph: Graph | None = None) -> dict:
    """Summary of a model directory, its weights checked against the graph (nothing written);
    `progress(done, total)` follows the tensors checked."""
    ckpt = ckpt or open_model(model_dir, allow_pickle)
    g = graph or build_model_graph(ckpt, form)
    expected = param_shapes(g)
    if ckpt.weights.backed:
        validate_weights(ckpt, g, progress)
    return dict(ckpt.summary(expected), graph_params=len(expected),
                weights="checked" if ckpt.weights.backed else "none (config only)")


def import_model(model_dir: str | Path, output: str | Path, form: str = "full",
                 allow_pickle: bool = False, progress: Progress | None = None,
                 ckpt: Checkpoint | None = None) -> dict:
    """Write the model's IR text (params by name) to `output` atomically; returns the summary."""
    ckpt = ckpt or open_model(model_dir, allow_pickle)
    g = build_model_graph(ckpt, form)
    summary = inspect_model(model_dir, form=form, progress=progress, ckpt=ckpt, graph=g)
    if not Path(output).parent.is_dir():
        raise LlmcError(f"{output}: the output directory does not exist")
    write_atomic(output, print_graph(g))
    return dict(summary, output=str(output), form=form, ops=len(g))
