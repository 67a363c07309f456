"""Artifacts and checkpoints to ONNX: `llmc export ARTIFACT --format onnx -o DIR`, and the
ONNX Runtime model the generation engine drives (runtime/onnx/session.py)."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from llmc.compiler.errors import LlmcError

FORMATS = ("onnx",)
PER_OP_TARGETS = ("cpu", "cuda", "mlu370", "bi150")


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
    """An OrtCausalLM for a compiled artifact. A cache-form artifact is exported as it is;
    a full-form artifact of a per-op target is recompiled in the cache form for the same
    target from its source checkpoint (the form generation needs). The export is kept in
    `cache_dir` (default `ARTIFACT/onnx`, reused while newer than the artifact; a temporary
    directory when the artifact is read-only)."""
    from llmc.compile import load_artifact
    from llmc.runtime.onnx.export import MODEL_FILE
    from llmc.runtime.onnx.session import OrtCausalLM

    art_dir = Path(artifact)
    out = Path(cache_dir) if cache_dir is not None else art_dir / "onnx"
    model = out / MODEL_FILE
    if not (model.exists() and model.stat().st_mtime >= (art_dir / "model.llmc").stat().st_mtime):
        report = load_artifact(art_dir).report
        if report.get("form") == "cache":
            write = partial(export_artifact, art_dir)
        elif report.get("form") == "full" and report.get("target") in PER_OP_TARGETS:
            write = partial(_export_checkpoint, report["source"], report["target"])
        else:
            raise LlmcError(f"{art_dir}: a {report.get('form')}-form artifact for "
                            f"{report.get('target')} does not run on onnxruntime; compile for "
                            "the cpu target, or run it with --runtime reference")
        try:
            model = write(out)
        except LlmcError as e:
            if "cannot create" not in str(e):
                raise
            model = write(tempfile.mkdtemp(prefix="llmc-onnx-"))
    return OrtCausalLM(model, provider=provider, threads=threads)


def _export_checkpoint(source: str | Path, target: str, out_dir: str | Path) -> Path:
    """Compile `source`'s cache form for `target` and export it to `out_dir`."""
    from llmc.compile import compile_model
    from llmc.frontends.loader import open_checkpoint
    from llmc.runtime.onnx.export import export

    c = compile_model(source, target, form="cache")
    return export(c.graph, open_checkpoint(source).weights, out_dir, target=target,
                  max_positions=_max_positions(c.report["config"]), check=False)


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
