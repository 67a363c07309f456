"""The `llmc` command line: a thin layer over library functions.

Heavy imports (numpy kernels, paddle, onnxruntime, torch) happen inside
commands, so `llmc --help` stays fast. User errors print one located message
and exit with code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="llmc",
    help="llmc: an open, testable graph compiler for LLaMA-family models "
    "(Ascend 910B, MLU370, BI-150, CUDA, CPU).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _instruments(print_ir_before, print_ir_after, print_ir_after_all, dump_dir, disable_pass,
                 verify_each):
    from llmc.compiler.passmanager import Instruments

    def names(xs):
        return {n.strip() for x in (xs or []) for n in x.split(",") if n.strip()}

    return Instruments(print_ir_before=names(print_ir_before), print_ir_after=names(print_ir_after),
                       print_ir_after_all=print_ir_after_all, dump_dir=dump_dir,
                       disabled=names(disable_pass), verify_each=verify_each)


PrintBefore = typer.Option(None, "--print-ir-before", help="Print the IR (to stderr) before the named pass.")
PrintAfter = typer.Option(None, "--print-ir-after", help="Print the IR (to stderr) after the named pass.")
PrintAfterAll = typer.Option(False, "--print-ir-after-all", help="Print the IR after every pass.")
DumpDir = typer.Option(None, "--dump-dir", help="Write the IR after each pass to DIR/NNN_<pass>.llmc.")
DisablePass = typer.Option(None, "--disable-pass", help="Skip the named pass (repeatable, or comma-separated).")
VerifyEach = typer.Option(False, "--verify-each", help="Run the verifier after every pass.")
JsonOut = typer.Option(False, "--json", help="Print a machine-readable JSON report on stdout.")


@app.command()
def opt(
    file: Path = typer.Argument(..., help="IR text file (.llmc); '-' reads stdin."),
    pipeline: str = typer.Option("", "-p", "--passes", help="Comma-separated passes, e.g. 'dce,cse,canonicalize'; options as name{opt=v}."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the result here (atomically) instead of stdout."),
    emit: str = typer.Option("ir", "--emit", help="Output form: 'ir' (text format) or 'dot' (Graphviz)."),
    split_input_file: bool = typer.Option(False, "--split-input-file", help="Treat '// -----' lines as separators between independent cases."),
    print_ir_before: Optional[List[str]] = PrintBefore,
    print_ir_after: Optional[List[str]] = PrintAfter,
    print_ir_after_all: bool = PrintAfterAll,
    dump_dir: Optional[str] = DumpDir,
    disable_pass: Optional[List[str]] = DisablePass,
    verify_each: bool = VerifyEach,
    json_out: bool = JsonOut,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Do not print the pass log."),
):
    """Parse IR, run passes, print the result (like mlir-opt / xdsl-opt).

    The pass log goes to stderr in the vendor's format plus match counts, op
    counts and timings: `--- Running IR pass [dce]  matched 3  ops 12 -> 9  0.1 ms`.
    """
    from llmc import api
    from llmc.compiler.text import decode_text, split_cases

    if emit not in ("ir", "dot"):
        raise api.LlmcError(f"--emit must be 'ir' or 'dot', got '{emit}'")
    name = "<stdin>" if str(file) == "-" else str(file)
    data = sys.stdin.read() if name == "<stdin>" else api.read_text(file)
    cases = split_cases(decode_text(data, name)) if split_input_file else [(0, data)]
    inst = _instruments(print_ir_before, print_ir_after, print_ir_after_all, dump_dir,
                        disable_pass, verify_each)
    outs, reports = [], []
    for _, text in cases:
        g = api.parse(text, name)
        records = api.run_pipeline(g, pipeline, inst, log=None if (quiet or json_out) else _err,
                                   emit_ir=lambda h, t: _err(f"{h}\n{t}"))
        if pipeline:
            from llmc.compiler.verifier import verify

            verify(g)
        outs.append(api.to_dot(g) if emit == "dot" else api.print_graph(g))
        reports.append({"passes": [r.__dict__ for r in records], "ops": len(g)})
    result = "// -----\n".join(outs)
    if json_out:
        doc = reports[0] if len(reports) == 1 else {"cases": reports}
        if output is None:
            doc = dict(doc, output=result)
        typer.echo(json.dumps(doc, indent=2))
    if output is not None:
        api.write_atomic(output, result)
    elif not json_out:
        sys.stdout.write(result)


@app.command()
def run(
    file: Path = typer.Argument(..., help="IR text file (.llmc)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", "-i", help=".npz with one array per graph input name."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help=".npz or .safetensors with one array per parameter name."),
    output: Path = typer.Option(Path("outputs.npz"), "-o", "--output", help="Where to write the outputs (.npz, atomically)."),
    json_out: bool = JsonOut,
):
    """Run a graph on the numpy reference interpreter and write its outputs."""
    from llmc import api

    g = api.parse(api.read_text(file), str(file))
    ins = api.load_arrays(inputs) if inputs else {}
    ws = api.load_arrays(weights) if weights else {}
    outs = api.run_reference(g, ins, ws)
    named = {f"output_{i}" if v.name.isdigit() else v.name: a for i, (v, a) in enumerate(zip(g.outputs, outs))}
    api.save_npz(output, named)
    summary = {k: {"dtype": str(a.dtype), "shape": list(a.shape)} for k, a in named.items()}
    if json_out:
        typer.echo(json.dumps({"output": str(output), "arrays": summary}, indent=2))
    else:
        for k, s in summary.items():
            typer.echo(f"{k}: {s['dtype']}{s['shape']}")
        typer.echo(f"wrote {output}")


@app.command()
def passes(
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Print this target's pipeline instead of every pass."),
    json_out: bool = JsonOut,
):
    """List registered passes with one-line docs (or a target's pipeline)."""
    from llmc import api

    rows = api.list_passes(target)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max((len(r["spec"]) for r in rows), default=0)
    if target:
        typer.echo(f"pipeline for target '{target}':")
    for i, r in enumerate(rows, 1):
        prefix = f"{i:2d}. " if target else ""
        typer.echo(f"{prefix}{r['spec']:<{width}}  {r['doc']}")


@app.command()
def demo(
    target: str = typer.Option("ascend910b", "--target", "-t", help="Target to compile for."),
    arch: str = typer.Option("llama_gqa", "--arch", help="Tiny architecture: llama, llama_gqa, llama_rope_scaling, baichuan2_7b, baichuan2_13b, chinese_llama2."),
    workdir: str = typer.Option("demo-out", "--workdir", help="Where the checkpoint and artifact are written."),
    prompt: str = typer.Option("The quick brown fox", "--prompt", "-p", help="Prompt to generate from."),
    max_new_tokens: int = typer.Option(12, "--max-new-tokens", "-n", help="Tokens to generate."),
    json_out: bool = JsonOut,
):
    """Write a tiny random checkpoint, compile it (pass log on screen), generate from the artifact."""
    from llmc import demo as demo_mod
    from llmc.compiler.errors import LlmcError
    from llmc.frontends.fixtures import ARCHES

    if arch not in ARCHES:
        raise LlmcError(f"unknown demo architecture '{arch}'; known: {', '.join(ARCHES)}")
    demo_mod.main(workdir=workdir, target=target, arch=arch, prompt=prompt,
                  max_new_tokens=max_new_tokens, json_out=json_out, log=typer.echo)


ModelDir = typer.Argument(..., help="Model directory (config.json + weights), or a config .json.")
AllowPickle = typer.Option(False, "--allow-pickle", help="Allow pytorch_model.bin (a pickle: only for trusted files).")
Form = typer.Option("full", "--form", help="Graph form: 'full' (training / parity), 'inference' (paged KV cache) or 'cache' (max-length KV buffers).")


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
        typer.echo(json.dumps(s, indent=2))
    else:
        _print_summary(s)


def _with_progress(fn, total: int, quiet: bool):
    """Call fn(progress) with a rich progress bar on stderr over `total` tensors."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return fn(None)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("checking weights", total=total)
        return fn(lambda _name: bar.advance(task))


@app.command("import")
def import_(
    model_dir: Path = ModelDir,
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the IR text (atomically)."),
    form: str = Form,
    allow_pickle: bool = AllowPickle,
    json_out: bool = JsonOut,
):
    """Map a checkpoint to IR: write the graph text (params by name) and print a summary."""
    from llmc import api

    ckpt = api.open_model(model_dir, allow_pickle)
    s = _with_progress(lambda p: api.import_model(model_dir, output, form, allow_pickle, p, ckpt),
                       len(ckpt.weights), json_out)
    _report(s, json_out)


@app.command()
def inspect(
    model_dir: Path = ModelDir,
    form: str = Form,
    allow_pickle: bool = AllowPickle,
    json_out: bool = JsonOut,
):
    """Print a checkpoint's summary (architecture, parameters, bytes, dtype) without writing."""
    from llmc import api

    ckpt = api.open_model(model_dir, allow_pickle)
    s = _with_progress(lambda p: api.inspect_model(model_dir, allow_pickle, form, p, ckpt=ckpt),
                       len(ckpt.weights), json_out)
    _report(s, json_out)


@app.command("compile")
def compile_(
    model: Optional[Path] = typer.Argument(None, help="Model directory (config.json + weights)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Compile from a config.json alone (no weights)."),
    target: str = typer.Option(..., "--target", "-t", help="ascend910b, mlu370, bi150, cuda or cpu."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Artifact directory (written atomically)."),
    form: Optional[str] = typer.Option(None, "--form", help="Graph form: 'inference', 'full' or 'cache' (default: the target's)."),
    print_ir_before: Optional[List[str]] = PrintBefore,
    print_ir_after: Optional[List[str]] = PrintAfter,
    print_ir_after_all: bool = PrintAfterAll,
    dump_dir: Optional[str] = DumpDir,
    disable_pass: Optional[List[str]] = DisablePass,
    verify_each: bool = VerifyEach,
    json_out: bool = JsonOut,
):
    """Import a checkpoint (or config), run the target's pipeline, write the artifact.

    The pass log goes to stderr: `--- Running IR pass [name]  matched N (expected M)  ...`.
    """
    from llmc.compile import check_output, compile_model, write_artifact
    from llmc.compiler.errors import LlmcError

    if (model is None) == (config is None):
        raise LlmcError("compile: give a MODEL_DIR or --config FILE (exactly one)")
    if output is not None:
        check_output(output)  # before the pipeline runs
    inst = _instruments(print_ir_before, print_ir_after, print_ir_after_all, dump_dir,
                        disable_pass, verify_each)
    c = compile_model(model or config, target, form, inst, log=None if json_out else _err,
                      emit_ir=lambda h, t: _err(f"{h}\n{t}"))
    if c.report["mismatches"]:
        _err(f"WARNING: {len(c.report['mismatches'])} pass(es) matched other than the model predicts: "
             f"{', '.join(c.report['mismatches'])}")
    if output is not None:
        write_artifact(c, output)
    if json_out:
        typer.echo(json.dumps(dict(c.report, output=str(output) if output else None), indent=2))
    elif output is not None:
        typer.echo(f"wrote {output} ({c.report['ops_in']} -> {c.report['ops_out']} ops, "
                   f"{c.report['pipeline_ms']:.1f} ms)")


@app.command()
def generate(
    artifact: Path = typer.Argument(..., help="A directory written by `llmc compile -o`."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text (needs the checkpoint's tokenizer)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Prompt token ids, comma-separated."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", "-n", help="Tokens to generate."),
    json_out: bool = JsonOut,
):
    """Greedy generation from a compiled artifact of any target on the reference interpreter."""
    from llmc.compile import generate as gen
    from llmc.compile import load_artifact
    from llmc.compiler.errors import LlmcError

    if (prompt is None) == (ids is None):
        raise LlmcError("generate: give --prompt TEXT or --ids 1,2,3 (exactly one)")
    if max_new_tokens < 1:
        raise LlmcError(f"generate: --max-new-tokens must be positive, got {max_new_tokens}")
    art = load_artifact(artifact)
    eos = art.report.get("config", {}).get("eos_token_id")
    tok = None
    if prompt is not None:
        from llmc.frontends.tokenizer import load_tokenizer

        tok = load_tokenizer(art.manifest["model_dir"])
        prompt_ids = tok.encode(prompt)
    else:
        if any(not t.strip() for t in ids.split(",")):
            raise LlmcError(f"generate: --ids has an empty item: '{ids}'")
        try:
            prompt_ids = [int(t) for t in ids.split(",")]
        except ValueError:
            raise LlmcError(f"generate: --ids must be comma-separated integers, got '{ids}'") from None
    new = gen(art, prompt_ids, max_new_tokens, eos)
    text = tok.decode(new) if tok is not None else None
    if json_out:
        typer.echo(json.dumps({"target": art.report.get("target"), "prompt_ids": prompt_ids,
                               "new_ids": new, "text": text}, indent=2))
    else:
        typer.echo(text if text is not None else ",".join(map(str, new)))


@app.command()
def export(
    artifact: Path = typer.Argument(..., help="A directory written by `llmc compile -o`."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format: onnx."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for model.onnx and its external data."),
    json_out: bool = JsonOut,
):
    """Export a compiled artifact to ONNX (standard ops + com.microsoft fused kernels)."""
    from llmc.onnx_export import export_artifact

    path = export_artifact(artifact, output, fmt)
    data = path.with_name(path.name + ".data")
    size = data.stat().st_size if data.exists() else 0
    if json_out:
        typer.echo(json.dumps({"model": str(path), "external_data_bytes": size}, indent=2))
    else:
        typer.echo(f"wrote {path} (+ {size / 1e6:.1f} MB external data)")


@app.command()
def fixture(
    out_dir: Path = typer.Argument(..., help="Directory to write the checkpoint into."),
    arch: str = typer.Option("llama", "--arch", help="llama, llama_gqa, llama_rope_scaling, baichuan2_7b, baichuan2_13b, chinese_llama2."),
    fmt: str = typer.Option("hf-numpy", "--format", "-f", help="hf (transformers save_pretrained), hf-numpy (no torch), hf-sharded, paddle, paddle-tp2, paddle-fused, paddleformers."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
):
    """Write a tiny random checkpoint (config, weights, tokenizer) for tests and experiments."""
    from llmc.compiler.errors import LlmcError
    from llmc.frontends.fixtures import ARCHES, FORMATS, write_fixture

    if arch not in ARCHES:
        raise LlmcError(f"unknown architecture '{arch}'; known: {', '.join(ARCHES)}")
    if fmt not in FORMATS:
        raise LlmcError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
    typer.echo(f"wrote {write_fixture(out_dir, arch, fmt, seed)} ({arch}, {fmt})")


def main() -> None:
    """Console entry point: user errors become one message and exit code 2."""
    from llmc.compiler.errors import IRSyntaxError, LlmcError

    try:
        app()
    except IRSyntaxError as e:
        _err(str(e))
        sys.exit(2)
    except LlmcError as e:
        _err(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
