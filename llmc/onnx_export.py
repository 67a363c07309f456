"""Artifacts and checkpoints to ONNX: `llmc export ARTIFACT --format onnx -o DIR`, and the
ONNX Runtime model the generation engine drives (runtime/onnx/session.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from llmc.compiler.errors import LlmcError

FORMATS = ("onnx",)


def _max_positions(config: dict) -> int:
    return int(config.get("max_position_embeddings") or 4096)


def export_artifact(artifact: str | Path, out_dir: str | Path, fmt: str = "onnx") -> Path:
    """Write `out_dir/model.onnx` (+ external data) for a compiled artifact; returns its path."""
    from llmc.compile import load_artifact
    from llmc.runtime.onnx.export import export

    if fmt not in FORMATS:
        raise LlmcError(f"export: --format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    art = load_artifact(artifact)
    report = art.report
    meta = {"llmc_form": report.get("form", ""), "llmc_model": report.get("model", "")}
    return export(art.graph, art.weights(), out_dir, target=report.get("target", "cpu"),
                  max_positions=_max_positions(report.get("config", {})), metadata=meta)


def ort_model_for_artifact(artifact: str | Path, provider: str = "cpu", threads: int = 2,
                           cache_dir: str | Path | None = None):
    """An OrtCausalLM on a cache-form artifact. The ONNX export is kept in `cache_dir`
    (default: `ARTIFACT/onnx`, reused while it is newer than the artifact's model.llmc;
    a temporary directory when the artifact is read-only)."""
    from llmc.runtime.onnx.export import MODEL_FILE
    from llmc.runtime.onnx.session import OrtCausalLM

    art_dir = Path(artifact)
    out = Path(cache_dir) if cache_dir is not None else art_dir / "onnx"
    model = out / MODEL_FILE
    fresh = model.exists() and model.stat().st_mtime >= (art_dir / "model.llmc").stat().st_mtime
    if not fresh:
        try:
            export_artifact(art_dir, out)
        except LlmcError as e:
            if "cannot create" not in str(e):
                raise
            tmp = tempfile.mkdtemp(prefix="llmc-onnx-")
            model = export_artifact(art_dir, tmp)
    return OrtCausalLM(model, provider=provider, threads=threads)


def ort_model_for_checkpoint(source: str | Path, target: str = "cpu", provider: str = "cpu",
                             threads: int = 2, workdir: str | Path | None = None):
    """Compile a checkpoint's cache form for `target` and open it on ONNX Runtime (the
    export goes to `workdir`, a temporary directory by default)."""
    from llmc.compile import compile_model
    from llmc.frontends.loader import open_checkpoint
    from llmc.runtime.onnx.session import OrtCausalLM

    c = compile_model(source, target, form="cache")
    ck = open_checkpoint(source)
    return OrtCausalLM.from_graph(c.graph, ck.weights, target=target, workdir=workdir,
                                  max_positions=_max_positions(c.report["config"]),
                                  provider=provider, threads=threads)
