"""Artifacts and checkpoints to ONNX: `llmc export ARTIFACT --format onnx -o DIR`, and the
ONNX Runtime model the generation engine drives (runtime/onnx/session.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from llmc.compiler.atomic import replace_dir
from llmc.compiler.errors import LlmcError

FORMATS = ("onnx",)
_PROCESS_EXPORTS: list[tempfile.TemporaryDirectory] = []


def _max_positions(config: dict) -> int:
    return int(config.get("max_position_embeddings") or 4096)


def export_artifact(artifact: str | Path, out_dir: str | Path, fmt: str = "onnx") -> Path:
    """Write `out_dir/model.onnx` (+ external data) for a compiled artifact; returns its path."""
    from llmc.artifact import load_artifact
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
    """An OrtCausalLM for a cache-form artifact (any other form is a clear error). The
    export is kept in `cache_dir` (default `ARTIFACT/onnx`, reused while newer than the
    artifact), written atomically; a temporary directory when the artifact is read-only."""
    from llmc.artifact import load_artifact
    from llmc.runtime.onnx.export import MODEL_FILE
    from llmc.runtime.onnx.session import OrtCausalLM

    art_dir = Path(artifact)
    out = Path(cache_dir) if cache_dir is not None else art_dir / "onnx"
    model = out / MODEL_FILE
    if not (model.exists() and model.stat().st_mtime >= (art_dir / "model.llmc").stat().st_mtime):
        report = load_artifact(art_dir).report
        if report.get("form") != "cache":
            raise LlmcError(
                f"{art_dir}: this {report.get('form')}-form artifact for {report.get('target')} "
                "does not run on onnxruntime, which needs the cache form (the default of the "
                "cpu, cuda, mlu370 and bi150 targets); compile with --form cache, or run it "
                "with --runtime reference")
        model = _export_cached(art_dir, out)
    return OrtCausalLM(model, provider=provider, threads=threads)


def _export_cached(art_dir: Path, out: Path) -> Path:
    """Export into `out` through `replace_dir`: a reader sees the old export or the new one,
    never half of one; a killed export's leftovers are removed by the next one. A read-only
    artifact is exported to a temporary directory kept for this process only."""
    from llmc.runtime.onnx.export import MODEL_FILE

    if not os.access(out.parent, os.W_OK):
        tmp_dir = tempfile.TemporaryDirectory(prefix="llmc-onnx-")
        _PROCESS_EXPORTS.append(tmp_dir)  # removed when the interpreter exits
        return export_artifact(art_dir, tmp_dir.name)
    replace_dir(out, lambda tmp: export_artifact(art_dir, tmp), what="the ONNX export")
    return out / MODEL_FILE


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
