"""The generation commands of `llmc`: generate and chat, on any artifact through the one
generation engine (runtime/engine.py), on ONNX Runtime, the reference interpreter or
Paddle (llmc/runtimes.py chooses and opens the runtime)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer

from llmc.compiler.errors import LlmcError

from .options import JsonOut, echo_json

Runtime = Literal["onnxruntime", "reference", "paddle"]  # llmc/runtimes.py RUNTIMES
Provider = Literal["cpu", "cuda"]
Device = Literal["cpu", "gpu", "npu", "mlu", "iluvatar_gpu"]  # llmc/runtimes.py DEVICES

ArtifactArg = typer.Argument(..., help="A directory written by `llmc compile -o`.")
RuntimeOpt = typer.Option(None, "--runtime", show_default=False,
                          help="onnxruntime (default for cache-form artifacts), reference "
                               "(the numpy interpreter; default for the other forms) or paddle.")
DeviceOpt = typer.Option("cpu", "--device", help="Paddle device for --runtime paddle.")
ProviderOpt = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider.")
ThreadsOpt = typer.Option(0, "--threads", help="ONNX Runtime intra-op threads (0: its choice).")
TemperatureOpt = typer.Option(0.0, "--temperature", help="0: greedy; else the softmax temperature.")
TopKOpt = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: all).")
TopPOpt = typer.Option(1.0, "--top-p", help="Sample within this probability mass (1: all).")
RepetitionOpt = typer.Option(1.0, "--repetition-penalty",
                             help="Penalize tokens already in the prompt or output (1: none).")
SeedOpt = typer.Option(None, "--seed", help="Seed of the sampling (reproducible draws).")
StopOpt = typer.Option(None, "--stop", metavar="STR",
                       help="End the answer before this text (repeatable).")
FLAG_NAMES = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
              "repetition_penalty": "--repetition-penalty",
              "max_new_tokens": "--max-new-tokens"}


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _params(command: str, **values):
    """GenerationParams from the flags; a bad value is one line naming its flag."""
    from llmc.runtime.engine import GenerationParams

    try:
        return GenerationParams(**values)
    except LlmcError as e:
        msg = str(e)
        for field, flag in FLAG_NAMES.items():
            if msg.startswith(field + " "):
                msg = flag + msg[len(field):]
        raise LlmcError(f"{command}: {msg}") from None


def _parse_ids(ids: str) -> list[int]:
    if any(not t.strip() for t in ids.split(",")):
        raise LlmcError(f"generate: --ids has an empty item: '{ids}'")
    try:
        return [int(t) for t in ids.split(",")]
    except ValueError:
        raise LlmcError(f"generate: --ids must be comma-separated integers, got '{ids}'") from None


def _read_batch(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LlmcError(f"--batch-file {path}: cannot read it ({e})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise LlmcError(f"--batch-file {path}: no prompts (one per line)")
    return prompts


def _tokenizer(art):
    from llmc.frontends.tokenizer import load_tokenizer

    return load_tokenizer(art.manifest["model_dir"])


def open_model(artifact: str | Path, runtime: str | None = None, provider: str = "cpu",
               threads: int = 0, device: str = "cpu"):
    """(model, artifact, runtime name) for `artifact` on `runtime` (None: the default for
    its form). `provider` and `threads` apply to onnxruntime (threads 0: ORT decides),
    `device` to paddle."""
    from llmc.artifact import load_artifact
    from llmc.runtimes import (PROVIDERS, RUNTIMES, default_runtime, paddle_model,
                               reference_model)

    if runtime is not None and runtime not in RUNTIMES:
        raise LlmcError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    if provider not in PROVIDERS:
        raise LlmcError(f"--provider must be one of {', '.join(PROVIDERS)}, got '{provider}'")
    if threads < 0:
        raise LlmcError(f"--threads must be >= 0 (0: onnxruntime decides), got {threads}")
    if device != "cpu" and runtime != "paddle":
        raise LlmcError(f"--device {device} applies to --runtime paddle")
    art = load_artifact(artifact)
    runtime = runtime or default_runtime(art.report.get("form", ""))
    if runtime == "paddle":
        if provider != "cpu":
            raise LlmcError(f"--provider {provider} applies to --runtime onnxruntime; "
                            "--runtime paddle takes --device")
        return paddle_model(art, device), art, runtime
    if runtime == "reference":
        if provider != "cpu":
            raise LlmcError(f"--provider {provider} applies to --runtime onnxruntime; the "
                            "reference interpreter runs on the CPU")
        return reference_model(art), art, runtime
    from llmc.onnx_export import ort_model_for_artifact
    from llmc.runtime.onnx.session import provider_list

    provider_list(provider)  # no CUDA provider: say so before exporting anything
    return ort_model_for_artifact(artifact, provider=provider, threads=threads), art, runtime


def _timings_doc(t) -> dict:
    return {"prefill_tokens": t.prefill_tokens, "prefill_s": round(t.prefill_s, 6),
            "prefill_tok_s": round(t.prefill_tok_s, 3), "decode_tokens": t.decode_tokens,
            "decode_s": round(t.decode_s, 6), "decode_tok_s": round(t.decode_tok_s, 3),
            "ttft_s": round(t.ttft_s, 6)}


def _show(run, batch: bool, with_text: bool) -> None:
    """Stream one prompt's text (or ids) as it comes; for a batch, print each row's result,
    prefixed by its index, when it is done."""
    shown: dict[int, list] = {}
    for event in run:
        piece = event.text if with_text else str(event.token)
        if not batch:
            sep = "," if not with_text and shown.get(0) else ""
            sys.stdout.write(sep + piece)
            sys.stdout.flush()
        shown.setdefault(event.row, []).append(piece)
        if batch and event.finish_reason is not None:
            body = ("" if with_text else ",").join(shown[event.row])
            typer.echo(f"[{event.row}] {body}")
    if not batch:
        sys.stdout.write("\n")
        sys.stdout.flush()


def generate(
    artifact: Path = ArtifactArg,
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt text (needs the checkpoint's tokenizer)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Prompt token ids, comma-separated."),
    batch_file: Optional[Path] = typer.Option(None, "--batch-file", help="A text file of prompts, one per line, generated as one batch."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="Most tokens to generate per prompt."),
    runtime: Optional[Runtime] = RuntimeOpt,
    provider: Provider = ProviderOpt,
    threads: int = ThreadsOpt,
    device: Device = DeviceOpt,
    temperature: float = TemperatureOpt,
    top_k: int = TopKOpt,
    top_p: float = TopPOpt,
    repetition_penalty: float = RepetitionOpt,
    seed: Optional[int] = SeedOpt,
    stop: Optional[List[str]] = StopOpt,
    json_out: bool = JsonOut,
):
    """Generate from a compiled artifact: the text streams to stdout as it is generated
    (a batch prints each result when done, prefixed by its index); time to first token,
    prefill and decode tokens/s go to stderr. Stops on the config's eos, --stop, or -n."""
    from dataclasses import replace

    from llmc.compile import check_prompt
    from llmc.runtime.engine import Engine, format_timings
    from llmc.runtimes import eos_of, paddle_kernels

    if sum(x is not None for x in (prompt, ids, batch_file)) != 1:
        raise LlmcError("generate: give --prompt TEXT, --ids 1,2,3 or --batch-file FILE "
                        "(exactly one)")
    params = _params("generate", max_new_tokens=max_new_tokens, temperature=temperature,
                     top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                     seed=seed, stop=tuple(stop or ()))
    texts = _read_batch(batch_file) if batch_file is not None else [prompt]
    model, art, used = open_model(artifact, runtime, provider, threads, device)
    config = art.report.get("config", {})
    tok = _tokenizer(art) if ids is None or stop else None
    prompts = [_parse_ids(ids)] if ids is not None else [tok.encode(t) for t in texts]
    for p in prompts:
        check_prompt(config, p, max_new_tokens)
    run = Engine(model, tok).stream(prompts, replace(params, eos_token_id=eos_of(config)))
    if json_out:
        for _ in run:
            pass
        rows = [{"prompt_ids": p, "new_ids": r.tokens, "text": r.text if tok else None,
                 "finish_reason": r.finish_reason} for p, r in zip(prompts, run.result.rows)]
        echo_json({"target": art.report["target"], "form": art.report["form"],
                   "runtime": used, "provider": provider if used == "onnxruntime" else None,
                   "kernels": paddle_kernels(model), "results": rows, "timings": _timings_doc(run.result.timings)})
        return
    _show(run, batch_file is not None, tok is not None)
    _err(f"{used}: {format_timings(run.result.timings)}")


def chat(
    artifact: Path = ArtifactArg,
    runtime: Optional[Runtime] = RuntimeOpt,
    provider: Provider = ProviderOpt,
    threads: int = ThreadsOpt,
    device: Device = DeviceOpt,
    system: Optional[str] = typer.Option(None, "--system", help="A system prompt."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", show_default=False, help="Most tokens per answer (default: 512, or half the model's positions)."),
    temperature: float = TemperatureOpt,
    top_k: int = TopKOpt,
    top_p: float = TopPOpt,
    repetition_penalty: float = RepetitionOpt,
    seed: Optional[int] = SeedOpt,
    stop: Optional[List[str]] = StopOpt,
    stats: bool = typer.Option(False, "--stats", help="After each answer, a line of prefill/decode speed."),
):
    """Chat with a compiled artifact in the terminal, in the checkpoint's chat format
    (its template, Baichuan2's role ids, or Llama-2's [INST]). /reset forgets the history,
    /exit leaves; Ctrl-C stops the current answer."""
    from llmc.chat import DEFAULT_CONTEXT
    from llmc.chat import chat as run_chat
    from llmc.runtimes import eos_of

    values = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, seed=seed, stop=tuple(stop or ()))
    _params("chat", **values)  # a bad flag fails before the model loads
    model, art, _ = open_model(artifact, runtime, provider, threads, device)
    limit = model.max_positions or DEFAULT_CONTEXT
    n = max_new_tokens if max_new_tokens is not None else min(512, limit // 2)
    params = _params("chat", max_new_tokens=n,
                     eos_token_id=eos_of(art.report.get("config", {})), **values)
    run_chat(model, _tokenizer(art), sys.stdin, sys.stdout, params=params, system=system,
             stats=stats)


def register(app: typer.Typer) -> None:
    """Add these commands to the `llmc` app."""
    app.command()(generate)
    app.command()(chat)
