"""Command-line options shared by several `llmc` commands, declared once.

This module stays light (typer only, no numpy): `llmc --help` and shell completion
import it. The choice lists are literals, not imports of passes/ or frontends/, for
the same reason; tests/test_cli_choices.py keeps them equal to the registries.
"""

from __future__ import annotations

import functools
import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Literal, Optional

import typer

from llmc.compiler.errors import LlmcError

TARGETS = ("ascend910b", "mlu370", "bi150", "cuda", "cpu")  # passes/pipelines.py TARGETS
ARCHES = ("llama", "llama_gqa", "llama_rope_scaling", "baichuan2_7b", "baichuan2_13b",
          "chinese_llama2")  # frontends/fixtures.py ARCHES
FORMATS = ("hf", "hf-numpy", "hf-sharded", "paddle", "paddle-tp2", "paddle-fused",
           "paddleformers")  # frontends/fixtures.py FORMATS
FORMS = ("full", "inference", "cache")
EMITS = ("ir", "dot")

# typer turns a Literal into a choice: listed by --help, known to shell completion
Target = Literal[TARGETS]
Arch = Literal[ARCHES]
Format = Literal[FORMATS]
Form = Literal[FORMS]
Emit = Literal[EMITS]

JsonOut = typer.Option(False, "--json", help="Print a machine-readable JSON report on stdout.")
Force = typer.Option(False, "--force",
                     help="Allow the output to replace one of this command's inputs "
                          "or to go inside a checkpoint directory it reads.")
ModelDir = typer.Argument(None, show_default=False, metavar="[MODEL_DIR]",
                          help="Model directory (config.json + weights). "
                               "Give this or --config, not both.")
ConfigFile = typer.Option(None, "--config", "-c", show_default=False, metavar="FILE",
                          help="A config.json alone: a graph with unbacked parameters, no weights.")
TensorParallel = typer.Option(1, "--tp", min=1, metavar="N",
                              help="Tensor-parallel ranks: shard the model N ways "
                                   "(shard_tensor_parallel runs first).")
SequenceParallel = typer.Option(False, "--sequence-parallel",
                                help="With --tp: split the residual stream along the sequence "
                                     "(reduce_scatter / all_gather instead of all_reduce; "
                                     "full form only).")
Mc2 = typer.Option(None, "--mc2/--no-mc2", show_default=False,
                   help="With --tp: fuse each linear with its collective (fuse_mc2). "
                        "Default: on for ascend910b, off elsewhere.")
AllowPickle = typer.Option(False, "--allow-pickle",
                           help="Allow pytorch_model.bin (a pickle: only for trusted files).")


def echo_json(doc) -> None:
    """Print `doc` as indented JSON; non-ASCII text (a Chinese prompt) stays readable."""
    typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def model_source(model_dir: Path | None, config: Path | None, command: str) -> Path:
    """The one source `import`, `inspect` and `compile` read: MODEL_DIR or --config FILE."""
    if (model_dir is None) == (config is None):
        raise LlmcError(f"{command}: give a MODEL_DIR or --config FILE (exactly one)")
    if config is not None:
        if config.is_dir():
            raise LlmcError(f"--config {config}: is a directory; give the config .json file, "
                            "or the directory as MODEL_DIR")
        return config
    if model_dir.is_file():
        raise LlmcError(f"{model_dir}: is a file, not a model directory; "
                        f"use --config {model_dir} for a config-only graph")
    return model_dir


# ---- pass-manager instruments: `opt` and `compile` ------------------------------------

_INSTRUMENT_PARAMS = (
    ("print_ir_before", Optional[List[str]], typer.Option(
        None, "--print-ir-before", metavar="PASS", help="Print the IR (to stderr) before the named pass.")),
    ("print_ir_after", Optional[List[str]], typer.Option(
        None, "--print-ir-after", metavar="PASS", help="Print the IR (to stderr) after the named pass.")),
    ("print_ir_after_all", bool, typer.Option(
        False, "--print-ir-after-all", help="Print the IR after every pass.")),
    ("dump_dir", Optional[Path], typer.Option(
        None, "--dump-dir", metavar="DIR", help="Write the IR after each pass to DIR/NNN_<pass>.llmc.")),
    ("disable_pass", Optional[List[str]], typer.Option(
        None, "--disable-pass", metavar="PASS", help="Skip the named pass (repeatable, or comma-separated).")),
    ("verify_each", bool, typer.Option(
        False, "--verify-each", help="Run the verifier after every pass.")),
)


def _names(values: list[str] | None) -> set[str]:
    return {n.strip() for v in (values or []) for n in v.split(",") if n.strip()}


def build_instruments(print_ir_before=None, print_ir_after=None, print_ir_after_all=False,
                      dump_dir=None, disable_pass=None, verify_each=False):
    """The pass manager's `Instruments` from the command-line values."""
    from llmc.compiler.passmanager import Instruments

    return Instruments(print_ir_before=_names(print_ir_before),
                       print_ir_after=_names(print_ir_after),
                       print_ir_after_all=print_ir_after_all,
                       dump_dir=str(dump_dir) if dump_dir is not None else None,
                       disabled=_names(disable_pass), verify_each=verify_each)


def with_instruments(command: Callable) -> Callable:
    """Give a command the instrument options; it receives them as one `instruments` argument."""
    sig = inspect.signature(command)
    kept = [p for p in sig.parameters.values() if p.name != "instruments"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                               annotation=annotation)
             for name, annotation, option in _INSTRUMENT_PARAMS]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name, _, _ in _INSTRUMENT_PARAMS}
        return command(*args, instruments=build_instruments(**values), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=kept + added)
    wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items()
                                  if k != "instruments"},
                               **{p.name: p.annotation for p in added}}
    return wrapper


# ---- progress ---------------------------------------------------------------------------


@contextmanager
def tensor_progress(enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A `progress(done, total)` callback drawing a bar on stderr while tensors are checked
    (it goes away when the last one is); None (no bar) when disabled or when stderr is not
    a terminal."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    with Progress(console=console, transient=True) as bar:
        task = None

        def advance(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("checking weights", total=total)
            bar.update(task, completed=done)
            if done >= total:
                bar.stop()  # the pass log follows on stderr

        yield advance
