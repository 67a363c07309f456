"""The runtime commands of `llmc` that go beyond the reference interpreter: export."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from .options import Force, JsonOut, echo_json

ExportFormat = Literal["onnx"]


def export(
    artifact: Path = typer.Argument(..., help="A directory written by `llmc compile -o`."),
    fmt: ExportFormat = typer.Option("onnx", "--format", "-f", help="Export format."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for model.onnx and its external data (written atomically)."),
    json_out: bool = JsonOut,
    force: bool = Force,
):
    """Export a compiled artifact to ONNX (standard ops + com.microsoft fused kernels); a bare
    onnxruntime.InferenceSession runs the result."""
    from llmc.onnx_export import export_artifact
    from llmc.overwrite import refuse_overwriting_inputs

    refuse_overwriting_inputs([output], dirs=[artifact], force=force, replaces_dir=True)
    path = export_artifact(artifact, output, fmt)
    data = path.with_name(path.name + ".data")
    size = data.stat().st_size if data.exists() else 0
    if json_out:
        echo_json({"model": str(path), "external_data_bytes": size})
    else:
        typer.echo(f"wrote {path} (+ {size / 1e6:.1f} MB external data)")


def register(app: typer.Typer) -> None:
    """Add these commands to the `llmc` app."""
    app.command()(export)
