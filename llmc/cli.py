"""The `llmc` command line: a thin layer over library functions.

Heavy imports (numpy kernels, paddle, onnxruntime, torch) happen inside
commands, so `llmc --help` stays fast. User errors print one located message
and exit with code 2, never a traceback. The checkpoint commands (import,
inspect, compile, fixture, demo) live in cli_model.py, generate and chat in
cli_generate.py, export in cli_runtime.py, merge, eval and data in cli_train.py.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from llmc import __version__
from llmc.compiler.errors import IRSyntaxError, LlmcError

try:  # typer vendors click since 0.2x; older releases use click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from . import cli_generate, cli_model, cli_runtime, cli_train, cli_training
from .options import (
    Emit,
    Force,
    JsonOut,
    Mc2,
    SequenceParallel,
    Target,
    TensorParallel,
    echo_json,
    with_instruments,
)

app = typer.Typer(
    name="llmc",
    help="llmc: an open, testable graph compiler for LLaMA-family models "
    "(Ascend 910B, MLU370, BI-150, CUDA, CPU).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print llmc's version and exit."),
):
    """llmc: an open, testable graph compiler for LLaMA-family models
    (Ascend 910B, MLU370, BI-150, CUDA, CPU)."""


@app.command()
@with_instruments
def opt(
    file: Path = typer.Argument(..., help="IR text file (.llmc); '-' reads stdin."),
    pipeline: str = typer.Option("", "-p", "--passes", help="Comma-separated passes, e.g. 'dce,cse,canonicalize'; options as name{opt=v}."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the result here (atomically) instead of stdout."),
    emit: Emit = typer.Option("ir", "--emit", help="Output form: the IR text format or Graphviz."),
    split_input_file: bool = typer.Option(False, "--split-input-file", help="Treat '// -----' lines as separators between independent cases."),
    json_out: bool = JsonOut,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Do not print the pass log."),
    force: bool = Force,
    instruments=None,
):
    """Parse IR, run passes, print the result (like mlir-opt / xdsl-opt).

    The pass log goes to stderr in the vendor's format plus match counts, op
    counts and timings: `--- Running IR pass [dce]  matched 3  ops 12 -> 9  0.1 ms`.
    """
    from llmc import api
    from llmc.compiler.text import decode_text, split_cases
    from llmc.overwrite import refuse_overwriting_inputs

    name = "<stdin>" if str(file) == "-" else str(file)
    refuse_overwriting_inputs([output], files=[] if name == "<stdin>" else [file], force=force)
    data = sys.stdin.read() if name == "<stdin>" else api.read_text(file)
    cases = split_cases(decode_text(data, name)) if split_input_file else [(0, data)]
    outs, reports = [], []
    for _, text in cases:
        g = api.parse(text, name)
        records = api.run_pipeline(g, pipeline, instruments,
                                   log=None if (quiet or json_out) else _err,
                                   emit_ir=lambda h, t: _err(f"{h}\n{t}"))
        if pipeline:
            from llmc.compiler.verifier import verify

            verify(g)
        outs.append(api.to_dot(g) if emit == "dot" else api.print_graph(g))
        reports.append({"passes": [r.__dict__ for r in records], "ops": len(g)})
    result = "// -----\n".join(outs)
    if json_out:
        doc = reports[0] if len(reports) == 1 else {"cases": reports}
        echo_json(doc if output is not None else dict(doc, output=result))
    if output is not None:
        api.write_atomic(output, result)
    elif not json_out:
        sys.stdout.write(result)


def _refuse_inside(out_dir: Path, paths: dict) -> None:
    """--dump-values replaces OUT_DIR whole: none of the command's files may live in it."""
    from llmc.compiler.errors import LlmcError

    root = out_dir.resolve()
    for flag, p in paths.items():
        if p is not None and (p.resolve() == root or root in p.resolve().parents):
            raise LlmcError(f"--dump-values {out_dir}: {flag} {p} is inside it, and the "
                            "directory is replaced whole; dump somewhere else")


@app.command()
def run(
    file: Path = typer.Argument(..., help="IR text file (.llmc)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", "-i", help=".npz with one array per graph input name."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help=".npz or .safetensors with one array per parameter name."),
    output: Path = typer.Option(Path("outputs.npz"), "-o", "--output", help="Where to write the outputs (.npz, atomically)."),
    dump_values: Optional[Path] = typer.Option(
        None, "--dump-values", metavar="DIR",
        help="Also write every input and op result to DIR: <ssa name>.npy each, plus index.json "
             "(name, file, dtype, shape, op, line, in execution order). DIR is written "
             "atomically and must be new, empty, or an earlier dump (which it replaces)."),
    json_out: bool = JsonOut,
    force: bool = Force,
):
    """Run a graph on the numpy reference interpreter and write its outputs."""
    from llmc import api
    from llmc.overwrite import refuse_overwriting_inputs
    from llmc.runtime.reference import Interpreter, write_values

    refuse_overwriting_inputs([output], files=[file, inputs, weights], force=force)
    if dump_values is not None:
        _refuse_inside(dump_values, {"FILE": file, "--inputs": inputs, "--weights": weights,
                                     "--output": output})
    g = api.parse(api.read_text(file), str(file))
    ins = api.load_arrays(inputs) if inputs else {}
    ws = api.load_arrays(weights) if weights else {}
    interp = Interpreter(g, ws, keep_values=dump_values is not None)
    outs = interp.run(ins)
    named = {f"output_{i}" if v.name.isdigit() else v.name: a for i, (v, a) in enumerate(zip(g.outputs, outs))}
    api.save_npz(output, named)
    if dump_values is not None:
        write_values(dump_values, g, interp.values)
    summary = {k: {"dtype": str(a.dtype), "shape": list(a.shape)} for k, a in named.items()}
    if json_out:
        doc = {"output": str(output), "arrays": summary}
        if dump_values is not None:
            doc["values"] = {"dir": str(dump_values), "count": len(interp.values)}
        echo_json(doc)
    else:
        for k, s in summary.items():
            typer.echo(f"{k}: {s['dtype']}{s['shape']}")
        typer.echo(f"wrote {output}")
        if dump_values is not None:
            typer.echo(f"wrote {len(interp.values)} values to {dump_values}")


@app.command()
def passes(
    target: Optional[Target] = typer.Option(None, "--target", "-t", help="Print this target's pipeline instead of every pass."),
    tp: int = TensorParallel,
    sequence_parallel: bool = SequenceParallel,
    mc2: Optional[bool] = Mc2,
    json_out: bool = JsonOut,
):
    """List registered passes with one-line docs (or a target's pipeline, as `llmc compile
    --target T` runs it with the same --tp / --sequence-parallel / --mc2 flags)."""
    from llmc import api
    from llmc.passes.pipelines import Parallel

    parallel = Parallel(tp, sequence_parallel, mc2)
    if target is None and parallel != Parallel():
        raise LlmcError("--tp, --sequence-parallel and --mc2/--no-mc2 need --target "
                        "(they choose a target's pipeline)")
    rows = api.list_passes(target, parallel.tp, parallel.sequence_parallel, parallel.mc2)
    if json_out:
        echo_json(rows)
        return
    width = max((len(r["spec"]) for r in rows), default=0)
    if target:
        typer.echo(f"pipeline for target '{target}'{_parallel_note(parallel)}:")
    for i, r in enumerate(rows, 1):
        prefix = f"{i:2d}. " if target else ""
        typer.echo(f"{prefix}{r['spec']:<{width}}  {r['doc']}")


def _parallel_note(parallel) -> str:
    """' (tp 2, sequence parallel, mc2 off)' for a tensor-parallel pipeline, '' otherwise."""
    if parallel.tp == 1:
        return ""
    parts = [f"tp {parallel.tp}"] + (["sequence parallel"] if parallel.sequence_parallel else [])
    if parallel.mc2 is not None:
        parts.append("mc2 on" if parallel.mc2 else "mc2 off")
    return f" ({', '.join(parts)})"


cli_model.register(app)
cli_generate.register(app)
cli_runtime.register(app)
cli_training.register(app)
cli_train.register(app)


def _usage_error_line(e) -> str:
    """A command-line usage error as one line (click prints usage, a hint and a box)."""
    msg = e.format_message().replace("Value error, ", "")
    where = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
    return f"error: {msg}{where}"


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach a user as one `warning: ...` line, not Python's file:line format."""
    _err(f"warning: {message}")


def main() -> None:
    """Console entry point: user errors become one message and exit code 2."""
    command = typer.main.get_command(app)
    warnings.showwarning = _warning_line
    try:
        code = command.main(prog_name="llmc", standalone_mode=False)
    except NoArgsIsHelpError as e:  # bare `llmc`: the help text
        e.show()
        sys.exit(e.exit_code)
    except UsageError as e:
        _err(_usage_error_line(e))
        sys.exit(2)
    except ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except IRSyntaxError as e:
        _err(str(e))
        sys.exit(2)
    except LlmcError as e:
        _err(f"error: {e}")
        sys.exit(2)
    except RecursionError:  # a last resort: readers should name the file themselves
        _err(f"error: llmc {' '.join(sys.argv[1:])}: an input is nested too deeply to read")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        _err("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
