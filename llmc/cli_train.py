"""The training-side commands of `llmc`: merge (fold a LoRA adapter into a checkpoint), eval
(perplexity of texts, C-Eval accuracy) and `data prepare` (PaddleNLP's mmap corpus).

They are thin layers over llmc/merge.py, llmc/evaluate.py and frontends/data (docs/lora.md,
docs/data.md). `llmc train` (Paddle) is wired separately.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Optional

import typer

from llmc.compiler.errors import LlmcError

from .options import Force, JsonOut, echo_json

Split = Literal["val", "test", "dev"]  # llmc/evaluate.py SPLITS
OnError = Literal["fail", "skip"]  # frontends/data/jsonl.py ON_ERROR
DEFAULT_WINDOW, DEFAULT_STRIDE = 512, 256

OnErrorOpt = typer.Option(None, "--on-error", show_default=False,
                          help="A malformed data line: stop with its line number (fail, the "
                               "default) or drop it and count it (skip).")


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _report_skipped(stats) -> None:
    if stats.skipped_lines:
        _err(f"warning: skipped {stats.skipped_lines} bad line(s); first: {stats.errors[0]}")


def _need_dir(command: str, flag: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        why = "is not a directory" if path.exists() else "no such directory"
        raise LlmcError(f"{command}: {flag} {path}: {why}")


# ---- merge ------------------------------------------------------------------------------


def _check_merge_output(base: Path, adapter: Path, out: Path, force: bool) -> None:
    """OUT never overlaps an input (not even with --force: it is replaced whole); an existing
    OUT must be an earlier checkpoint or empty unless --force."""
    from llmc.overwrite import input_clash

    for d in (base, adapter):
        why = input_clash(out, dirs=[d], replaces_dir=True)
        if why is not None:
            raise LlmcError(f"merge: {why}; refusing to write there")
    if force or not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise LlmcError(f"merge: {out}: exists and is not a directory")
    if not (out / "config.json").is_file() and any(out.iterdir()):
        raise LlmcError(f"merge: {out}: exists and is not a checkpoint; it would be replaced "
                        "whole (pass --force to allow)")


def merge(
    base: Path = typer.Argument(..., help="Base checkpoint directory (safetensors weights)."),
    adapter: Path = typer.Argument(..., help="LoRA adapter directory in the PEFT layout "
                                             "(adapter_config.json + adapter_model.safetensors)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the merged "
                                "checkpoint (built beside it and swapped in whole)."),
    json_out: bool = JsonOut,
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT that is not a "
                               "checkpoint. OUT may never be, hold or lie inside BASE or ADAPTER."),
):
    """Fold a LoRA adapter (llmc's or PEFT's) into a full checkpoint: W' = W + scale * B @ A,
    in the base's own layout (shards, names, dtypes)."""
    from llmc.merge import merge as merge_adapter

    _check_merge_output(base, adapter, output, force)
    report = merge_adapter(base, adapter, output)
    if json_out:
        echo_json({"output": str(report.out_dir), "modules": report.modules,
                   "changed": report.changed, "files": report.files})
        return
    typer.echo(f"merged {len(report.modules)} adapter module(s) into "
               f"{len(report.changed)} tensor(s)")
    typer.echo(f"wrote {report.out_dir} ({', '.join(report.files)})")


# ---- eval -------------------------------------------------------------------------------


def _refuse_given(mode: str, given: dict[str, object]) -> None:
    for flag, value in given.items():
        if value is not None:
            raise LlmcError(f"eval: {flag} does not apply to {mode}")


def _eval_mode(data, ceval_dir, output, window, stride, split, few_shot, on_error
               ) -> tuple[str, int, int]:
    """('data' or 'ceval', window, stride), every flag checked against the mode."""
    if (data is None) == (ceval_dir is None):
        raise LlmcError("eval: give --data FILE or --ceval DIR (exactly one)")
    if data is not None:
        _refuse_given("--data (perplexity is printed; use --json)", {"--output": output})
        _refuse_given("--data", {"--split": split, "--few-shot": few_shot})
        window = DEFAULT_WINDOW if window is None else window
        stride = min(DEFAULT_STRIDE, window) if stride is None else stride
        if window < 2 or not 1 <= stride <= window:
            raise LlmcError(f"eval: need --window >= 2 and 1 <= --stride <= --window, got "
                            f"--window {window} --stride {stride}")
        return "data", window, stride
    _refuse_given("--ceval", {"--window": window, "--stride": stride, "--on-error": on_error})
    if output is None:
        raise LlmcError("eval: --ceval needs -o/--output DIR for summary.json")
    if few_shot is not None and few_shot < 0:
        raise LlmcError(f"eval: --few-shot must be >= 0, got {few_shot}")
    return "ceval", 0, 0


@contextmanager
def _scoring_progress(model, enabled: bool, what: str) -> Iterator[None]:
    """Count the model's forward passes on a stderr bar (on a terminal only)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield
        return
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed} scored"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task, inner = bar.add_task(what, total=None), model.logits

        def counted(ids):
            logits = inner(ids)
            bar.advance(task)
            return logits

        model.logits = counted
        yield


def _eval_texts(model, data: Path, window: int, stride: int, on_error: str, json_out: bool,
                extra: dict) -> None:
    from llmc.evaluate import perplexity
    from llmc.frontends.data import read_text_documents

    texts, stats = read_text_documents(data, on_error)
    _report_skipped(stats)
    with _scoring_progress(model, not json_out, "windows"):
        r = perplexity(model, texts, window, stride)
    doc = {**extra, "data": str(data), "loss": r.loss, "perplexity": r.perplexity,
           "tokens": r.tokens, "texts": r.texts, "windows": r.windows, "window": window,
           "stride": stride, "skipped_lines": stats.skipped_lines, "errors": stats.errors}
    if json_out:
        echo_json(doc)
        return
    typer.echo(f"{r.texts} text(s), {r.tokens} scored tokens, {r.windows} window(s) "
               f"(window {window}, stride {stride})")
    typer.echo(f"loss {r.loss:.4f}  perplexity {r.perplexity:.4f}")


def _print_ceval(summary: dict) -> None:
    width = max(len("subject"), *(len(s) for s in summary))
    typer.echo(f"{'subject':<{width}}  correct  total  accuracy")
    for subject, s in summary.items():
        typer.echo(f"{subject:<{width}}  {s['correct']:>7}  {s['total']:>5}  "
                   f"{100 * s['accuracy']:>7.1f}%")


def _eval_ceval(model, ceval_dir: Path, output: Path, split: str, few_shot: int,
                json_out: bool, extra: dict) -> None:
    from llmc.evaluate import ceval

    with _scoring_progress(model, not json_out, "questions"):
        summary = ceval(model, ceval_dir, output, split, few_shot)
    files = [str(output / "summary.json"), str(output / "predictions.json")]
    if json_out:
        echo_json({**extra, "ceval": str(ceval_dir), "split": split, "few_shot": few_shot,
                   "files": files, "summary": summary})
        return
    _print_ceval(summary)
    typer.echo(f"wrote {', '.join(files)}")


def eval_(
    model: Path = typer.Argument(..., help="Model directory (config.json, weights, tokenizer)."),
    data: Optional[Path] = typer.Option(None, "--data", metavar="FILE", help="Texts to score: "
                                        "{\"text\": ...} jsonl, or raw text with blank-line "
                                        "separated documents. Prints loss and perplexity."),
    ceval_dir: Optional[Path] = typer.Option(None, "--ceval", metavar="DIR", help="C-Eval CSVs "
                                             "(SUBJECT_SPLIT.csv: id,question,A,B,C,D,answer)."),
    window: Optional[int] = typer.Option(None, "--window", show_default=False, help=(
        f"--data: tokens per scoring window (default {DEFAULT_WINDOW}).")),
    stride: Optional[int] = typer.Option(None, "--stride", show_default=False, help=(
        f"--data: tokens the window moves by (default {DEFAULT_STRIDE}); each token is "
        "scored once.")),
    adapter: Optional[Path] = typer.Option(None, "--adapter", metavar="DIR",
                                           help="A LoRA adapter (PEFT layout) applied to MODEL."),
    split: Optional[Split] = typer.Option(None, "--split", show_default=False,
                                          help="--ceval: which split's files (default val)."),
    few_shot: Optional[int] = typer.Option(None, "--few-shot", show_default=False, help=(
        "--ceval: solved questions from SUBJECT_dev.csv before each one (default 0).")),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help=(
        "--ceval: directory for summary.json and predictions.json.")),
    on_error: Optional[OnError] = OnErrorOpt,
    json_out: bool = JsonOut,
    force: bool = Force,
):
    """Evaluate a checkpoint: perplexity of texts (--data) or C-Eval multiple-choice accuracy
    (--ceval), on the reference interpreter."""
    from llmc.evaluate import EvalModel
    from llmc.overwrite import refuse_overwriting_inputs

    mode, window, stride = _eval_mode(data, ceval_dir, output, window, stride, split, few_shot, on_error)
    extra = {"model": str(model), "adapter": None if adapter is None else str(adapter)}
    if mode == "ceval":
        outs = [output / "summary.json", output / "predictions.json"]
        refuse_overwriting_inputs(outs, dirs=[model, adapter, ceval_dir], force=force)
    for flag, d in (("MODEL", model), ("--adapter", adapter), ("--ceval", ceval_dir)):
        _need_dir("eval", flag, d)
    evaluated = EvalModel.from_dir(model, adapter)
    if mode == "data":
        _eval_texts(evaluated, data, window, stride, on_error or "fail", json_out, extra)
    else:
        _eval_ceval(evaluated, ceval_dir, output, split or "val", few_shot or 0, json_out, extra)


# ---- data -------------------------------------------------------------------------------

data_app = typer.Typer(name="data", help="Training data: PaddleNLP's tokenized corpora.",
                       no_args_is_help=True, rich_markup_mode=None,
                       context_settings={"help_option_names": ["-h", "--help"]})


@data_app.command("prepare")
def prepare(
    corpus: Path = typer.Argument(..., help="{\"text\": ...} jsonl, or raw text with blank-line "
                                            "separated documents."),
    output: Path = typer.Option(..., "-o", "--output", metavar="PREFIX",
                                help="Write PREFIX.bin + PREFIX.idx (atomically)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", metavar="MODEL_DIR",
                                   help="The model directory whose tokenizer encodes the texts."),
    append_eos: bool = typer.Option(True, "--append-eos/--no-append-eos",
                                    help="Close each document with EOS (PaddleNLP's "
                                         "--append_eos)."),
    on_error: Optional[OnError] = OnErrorOpt,
    json_out: bool = JsonOut,
    force: bool = Force,
):
    """Tokenize a corpus into PaddleNLP's mmap format (PREFIX.bin + PREFIX.idx, one document
    per text; uint16 ids below a 65500 vocabulary, int32 above), as its pretraining reads."""
    from llmc.frontends.data import prepare as prepare_corpus
    from llmc.frontends.data.indexed import strip_prefix
    from llmc.frontends.tokenizer import load_tokenizer
    from llmc.overwrite import refuse_overwriting_inputs

    prefix = strip_prefix(output)
    outs = [Path(prefix + ".bin"), Path(prefix + ".idx")]
    refuse_overwriting_inputs(outs, files=[corpus], dirs=[tokenizer], force=force)
    _need_dir("data prepare", "--tokenizer", tokenizer)
    r = prepare_corpus(corpus, prefix, load_tokenizer(tokenizer), on_error=on_error or "fail",
                       append_eos=append_eos)
    _report_skipped(r.stats)
    doc = {"bin": str(r.bin_path), "idx": str(r.idx_path), "documents": r.documents,
           "tokens": r.tokens, "dtype": str(r.dtype), "skipped_lines": r.stats.skipped_lines,
           "errors": r.stats.errors}
    if json_out:
        echo_json(doc)
    else:
        typer.echo(f"{r.documents} documents, {r.tokens} tokens, dtype {r.dtype}")
        typer.echo(f"wrote {r.bin_path}, {r.idx_path}")


def register(app: typer.Typer) -> None:
    """Add these commands to the `llmc` app."""
    app.command()(merge)
    app.command("eval")(eval_)
    app.add_typer(data_app, name="data")
