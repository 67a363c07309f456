"""The checkpoint commands of `llmc`: inspect, import, compile, fixture, demo.

`import`, `inspect` and `compile` read their model the same way: a MODEL_DIR argument
(config.json + weights) or `--config FILE` for a config-only graph, never both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


from .options import (
    AllowPickle,
    Arch,
    ConfigFile,
    Force,
    Form,
    Format,
    JsonOut,
    Mc2,
    ModelDir,
    SequenceParallel,
    Target,
    TensorParallel,
    echo_json,
    model_source,
    tensor_progress,
    with_instruments,
)

FormOpt = typer.Option("full", "--form", help="Graph form: 'full' (training / parity), 'inference' (paged KV cache) or 'cache' (past/present KV caches).")


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _print_summary(s: dict) -> None:
    rows = [("architecture", f"{s['architecture']} ({s['model']}, {s['family']} family)"),
            ("shape", f"{s['layers']} layers, hidden {s['hidden_size']}, {s['heads']} heads "
                      f"({s['kv_heads']} kv), vocab {s['vocab_size']}, {s['position']}"),
            ("parameters", f"{s['params']:,} ({s['bytes'] / 2**20:,.1f} MiB, {s['dtype']})"),
            ("weights", f"{s['weights']}; {s['format']}, {len(s['files'])} file(s)")]
    if "output" in s:
        rows.append(("wrote", f"{s['output']} ({s['form']} form, {s['ops']} ops)"))
    for key, value in rows:
        typer.echo(f"{key:<13} {value}")


def _report(s: dict, json_out: bool) -> None:
    if json_out:
        echo_json(s)
    else:
        _print_summary(s)


def import_(
    model_dir: Optional[Path] = ModelDir,
    config: Optional[Path] = ConfigFile,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the IR text (atomically)."),
    form: Form = FormOpt,
    allow_pickle: bool = AllowPickle,
    json_out: bool = JsonOut,
    force: bool = Force,
):
    """Map a checkpoint to IR: write the graph text (params by name) and print a summary."""
    from llmc import api
    from llmc.overwrite import refuse_overwriting_inputs

    source = model_source(model_dir, config, "import")
    ckpt = api.open_model(source, allow_pickle)
    refuse_overwriting_inputs([output], files=[config], dirs=[model_dir], force=force)
    with tensor_progress(not json_out) as progress:
        s = api.import_model(source, output, form, allow_pickle, progress, ckpt)
    _report(s, json_out)


def inspect(
    model_dir: Optional[Path] = ModelDir,
    config: Optional[Path] = ConfigFile,
    form: Form = FormOpt,
    allow_pickle: bool = AllowPickle,
    json_out: bool = JsonOut,
):
    """Print a checkpoint's summary (architecture, parameters, bytes, dtype) without writing."""
    from llmc import api

    source = model_source(model_dir, config, "inspect")
    ckpt = api.open_model(source, allow_pickle)
    with tensor_progress(not json_out) as progress:
        s = api.inspect_model(source, allow_pickle, form, progress, ckpt=ckpt)
    _report(s, json_out)


@with_instruments
def compile_(
    model_dir: Optional[Path] = ModelDir,
    config: Optional[Path] = ConfigFile,
    target: Target = typer.Option(..., "--target", "-t", help="The target to compile for."),
    output: Path = typer.Option(..., "-o", "--output", help="Artifact directory to write (atomically; an existing artifact there is replaced)."),
    form: Optional[Form] = typer.Option(None, "--form", help="Graph form (default: the target's)."),
    tp: int = TensorParallel,
    sequence_parallel: bool = SequenceParallel,
    mc2: Optional[bool] = Mc2,
    json_out: bool = JsonOut,
    force: bool = Force,
    instruments=None,
):
    """Import a checkpoint (or config), run the target's pipeline, write the artifact.

    The pass log goes to stderr: `--- Running IR pass [name]  matched N (expected M)  ...`.
    With --tp N the graph is sharded first and the summary gives the parameters per rank.
    """
    from llmc.artifact import check_output, write_artifact
    from llmc.compile import compile_model, per_rank_line
    from llmc.overwrite import refuse_overwriting_inputs
    from llmc.passes.pipelines import Parallel

    parallel = Parallel(tp, sequence_parallel, mc2)
    source = model_source(model_dir, config, "compile")
    refuse_overwriting_inputs([output], files=[config], dirs=[model_dir], force=force,
                              replaces_dir=True)
    refuse_overwriting_inputs([instruments.dump_dir], dirs=[model_dir], force=force)
    check_output(output)  # before the pipeline runs
    with tensor_progress(not json_out) as progress:
        c = compile_model(source, target, form, instruments, log=None if json_out else _err,
                          emit_ir=lambda h, t: _err(f"{h}\n{t}"), progress=progress,
                          parallel=parallel)
    if c.report["mismatches"]:
        _err(f"WARNING: {len(c.report['mismatches'])} pass(es) matched other than the model predicts: "
             f"{', '.join(c.report['mismatches'])}")
    write_artifact(c, output)
    if json_out:
        echo_json(dict(c.report, output=str(output)))
    else:
        typer.echo(f"wrote {output} ({c.report['ops_in']} -> {c.report['ops_out']} ops, "
                   f"{c.report['pipeline_ms']:.1f} ms)")
        if parallel.tp > 1:
            typer.echo(per_rank_line(c.report["parallel"]))


def fixture(
    out_dir: Path = typer.Argument(..., help="Directory to write the checkpoint into."),
    arch: Arch = typer.Option("llama", "--arch", help="Architecture of the tiny model."),
    fmt: Format = typer.Option("hf-numpy", "--format", "-f", help="Checkpoint format: hf (transformers save_pretrained), hf-numpy (no torch), hf-sharded, paddle, paddle-tp2, paddle-fused, paddleformers."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
    json_out: bool = JsonOut,
):
    """Write a tiny random checkpoint (config, weights, tokenizer) for tests and experiments."""
    from llmc.frontends.fixtures import write_fixture

    path = write_fixture(out_dir, arch, fmt, seed)
    if json_out:
        echo_json({"output": str(path), "arch": arch, "format": fmt, "seed": seed})
    else:
        typer.echo(f"wrote {path} ({arch}, {fmt})")


def demo(
    target: Target = typer.Option("ascend910b", "--target", "-t", help="Target to compile for."),
    arch: Arch = typer.Option("llama_gqa", "--arch", help="Architecture of the tiny model."),
    workdir: str = typer.Option("demo-out", "--workdir", help="Where the checkpoint and artifact are written."),
    prompt: str = typer.Option("The quick brown fox", "--prompt", help="Prompt to generate from."),
    max_new_tokens: int = typer.Option(12, "--max-new-tokens", "-n", help="Tokens to generate."),
    json_out: bool = JsonOut,
):
    """Write a tiny random checkpoint, compile it (pass log on screen), generate from the artifact."""
    from llmc import demo as demo_mod

    demo_mod.main(workdir=workdir, target=target, arch=arch, prompt=prompt,
                  max_new_tokens=max_new_tokens, json_out=json_out, log=typer.echo)


def register(app: typer.Typer) -> None:
    """Add these commands to the `llmc` app, in the order --help lists them."""
    app.command("import")(import_)
    app.command()(inspect)
    app.command("compile")(compile_)
    app.command()(fixture)
    app.command()(demo)
