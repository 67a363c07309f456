"""The compile driver: checkpoint (or config) → graph form → target pipeline → artifact.

The artifact itself (writing it atomically, reading it back checked) is artifact.py;
this module builds, compiles and generates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from llmc.compiler.builder import make_op
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import DType, Graph
from llmc.compiler.passmanager import Instruments, PassContext, PassRecord
from llmc.compiler.verifier import verify
from llmc.frontends.llama import build_full, build_inference
from llmc.frontends.loader import Checkpoint, open_checkpoint
from llmc.passes.pipelines import Parallel, get_target, pipeline_for
from llmc.passes.shard_tp import param_bytes, param_bytes_note, per_rank_param_bytes
from llmc.runtime.generate import check_length, eos_ids

from .artifact import Artifact, Compiled, check_output, load_artifact, write_artifact
from .pipeline import run_pipeline

__all__ = ["Artifact", "Compiled", "build_graph", "check_output", "check_prompt",
           "compile_model", "generate", "load_artifact", "model_facts", "weights_manifest",
           "write_artifact"]

I64_MAX = 2**63 - 1
Progress = Callable[[int, int], None]  # (tensors checked, tensors in all)


def build_graph(cfg, naming, form: str, last_token_only: bool = True) -> Graph:
    """The graph of `form` ('full', 'inference' or 'cache'). A full-form graph built for generation
    (`last_token_only`) returns the last token's logits, like the inference form."""
    if form == "inference":
        return build_inference(cfg, naming)
    if form == "cache":
        from llmc.frontends.cache_form import build_cache

        return build_cache(cfg, naming)
    if form != "full":
        raise LlmcError(f"--form must be 'full' or 'inference' or 'cache', got '{form}'")
    g = build_full(cfg, naming)
    if last_token_only:
        sl = make_op(g, "slice", [g.outputs[0]],
                     {"axes": (1,), "starts": (-1,), "ends": (I64_MAX,)}, name="last_logits")
        g.append(sl)
        g.outputs[0] = sl.output
    return g


def model_facts(cfg, form: str) -> dict:
    """What the passes may use to predict their match counts."""
    return {
        "num_layers": cfg.num_layers,
        "position": cfg.position,
        "qkv_packed": cfg.qkv_packed,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "form": form,
    }


def weights_manifest(g: Graph, ckpt: Checkpoint) -> dict:
    """Each parameter → its checkpoint file, stored dtype and shape (no data)."""
    store = ckpt.weights
    tensors = {}
    for name, p in g.params.items():
        entry = {"shape": list(p.type.shape)}
        if store.backed and name in store:
            info = store.info(name)
            entry.update(
                file=os.path.relpath(store.file_of(name), ckpt.model_dir),
                dtype=info.dtype,
                stored_shape=list(info.shape),
            )
        tensors[name] = entry
    return {
        "model_dir": str(Path(ckpt.model_dir).resolve()),
        "backed": bool(store.backed),
        "format": store.format,
        "compute_dtype": "float32",
        "tensors": tensors,
    }


def validate_weights(ckpt: Checkpoint, g: Graph, progress: Progress | None = None) -> None:
    """Every parameter of `g` must be in the checkpoint with its shape (nothing read but
    headers); `progress(done, total)` follows the tensors checked."""
    expected = {name: tuple(p.type.shape) for name, p in g.params.items()}
    tick = None
    if progress is not None:
        done = iter(range(1, len(expected) + 1))

        def tick(_name: str) -> None:
            progress(next(done, len(expected)), len(expected))
    ckpt.validate(expected, tick)


# bytes per element of the dtypes a config.json may declare (torch_dtype)
CONFIG_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def stored_itemsize(manifest: dict, config_dtype: str) -> dict[str, int]:
    """Bytes per element of each parameter as the checkpoint stores it (the manifest's
    dtype), or as the config declares it when there are no weights (`--config`)."""
    default = CONFIG_ITEMSIZE.get(config_dtype)
    out = {}
    for name, entry in manifest["tensors"].items():
        if "dtype" in entry:
            out[name] = DType(entry["dtype"]).np.itemsize
        elif default is not None:
            out[name] = default
    return out


def param_sizes(g: Graph, itemsize: dict[str, int] | None = None) -> dict[str, int]:
    """Elements and bytes of the parameters, whole and on one rank (shard_tp's rule: a
    parameter read only through `shard` ops counts as its largest slice); bytes at
    `itemsize` (parameter name → bytes per element), else at the graph's dtypes."""
    ones = dict.fromkeys(g.params, 1)  # one byte per element: the element counts
    return {"elements": param_bytes(g, ones), "elements_per_rank": per_rank_param_bytes(g, ones),
            "bytes": param_bytes(g, itemsize), "bytes_per_rank": per_rank_param_bytes(g, itemsize)}


def parallel_report(parallel: Parallel, g: Graph, records: list[PassRecord],
                    itemsize: dict[str, int] | None = None) -> dict:
    """The report's `parallel` entry: the options, whether fuse_mc2 ran, and the parameter
    elements and bytes (at `itemsize`) in all and per rank."""
    return {"tp": parallel.tp, "sequence_parallel": parallel.sequence_parallel,
            "mc2": any(r.name == "fuse_mc2" and not r.skipped for r in records),
            **{f"param_{k}": v for k, v in param_sizes(g, itemsize).items()}}


def per_rank_line(p: dict) -> str:
    """One line on what each tensor-parallel rank holds (the compile summary)."""
    flags = "".join((", sequence parallel" if p["sequence_parallel"] else "",
                     ", mc2" if p["mc2"] else ""))
    return (f"tp {p['tp']}{flags}: {p['param_elements_per_rank']:,} parameters per rank "
            f"({p['param_bytes_per_rank'] / 2**20:,.1f} MiB of {p['param_bytes'] / 2**20:,.1f} "
            "MiB as stored)")


def _report(source, tgt, form: str, cfg, g: Graph, ops_in: int, times: tuple[float, ...],
            records: list[PassRecord], parallel: dict) -> dict:
    t0, t1, t2 = times
    return {
        "target": tgt.name,
        "form": form,
        "model": cfg.name,
        "config": cfg.to_dict(),
        "source": str(source),
        "ops_in": ops_in,
        "ops_out": len(g),
        "op_counts": g.op_counts(),
        "build_ms": round((t1 - t0) * 1e3, 3),
        "pipeline_ms": round((t2 - t1) * 1e3, 3),
        "passes": [asdict(r) | {"mismatch": r.mismatch} for r in records],
        "mismatches": [r.name for r in records if r.mismatch],
        "parallel": parallel,
    }


def compile_model(
    source: str | Path,
    target: str,
    form: str | None = None,
    instruments: Instruments | None = None,
    log: Callable[[str], None] | None = None,
    emit_ir: Callable[[str, str], None] | None = None,
    progress: Progress | None = None,
    parallel: Parallel | None = None,
) -> Compiled:
    """Import `source` (model dir or config .json), run the target's pipeline (sharded
    first when `parallel.tp` > 1), verify."""
    tgt = get_target(target)
    parallel = parallel or Parallel()
    form = form or tgt.form
    ckpt = open_checkpoint(source)
    cfg = ckpt.config
    lines: list[str] = []

    def sink(s: str) -> None:
        lines.append(s)
        if log is not None:
            log(s)

    t0 = time.perf_counter()
    g = build_graph(cfg, ckpt.naming, form)
    if ckpt.weights.backed:
        validate_weights(ckpt, g, progress)
    t1 = time.perf_counter()
    ops_in = len(g)
    spec = pipeline_for(tgt.name, parallel.tp, parallel.sequence_parallel, parallel.mc2)
    records = run_pipeline(g, spec, instruments, log=sink, emit_ir=emit_ir,
                           ctx=PassContext(model=model_facts(cfg, form)))
    verify(g)
    t2 = time.perf_counter()
    manifest = weights_manifest(g, ckpt)
    tp = parallel_report(parallel, g, records, stored_itemsize(manifest, cfg.dtype))
    note = param_bytes_note(PassContext(model={"tensor_parallel": tp})) if parallel.tp > 1 else None
    if note is not None:
        sink(note)
    report = _report(source, tgt, form, cfg, g, ops_in, (t0, t1, t2), records, tp)
    return Compiled(g, tgt.name, form, records, report, manifest, lines)


def check_prompt(config: dict, prompt_ids: list[int], max_new_tokens: int) -> None:
    """Refuse a bad request before running anything: ids outside the vocabulary, an empty
    prompt, or prompt + max_new_tokens beyond max_position_embeddings (every target alike)."""
    if not prompt_ids:
        raise LlmcError("generate: the prompt has no tokens")
    vocab = config.get("vocab_size")
    for t in prompt_ids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise LlmcError(f"generate: token id {t!r} is not an integer")
        if t < 0 or (vocab is not None and t >= vocab):
            have = f"the vocabulary has {vocab} ids (0..{vocab - 1})" if vocab else "ids are >= 0"
            raise LlmcError(f"generate: token id {t} is out of range; {have}")
    if max_new_tokens < 1:
        raise LlmcError(f"generate: max_new_tokens must be positive, got {max_new_tokens}")
    try:
        check_length(len(prompt_ids), max_new_tokens, config.get("max_position_embeddings"))
    except LlmcError as e:
        raise LlmcError(f"generate: {e}") from None


def generate(
    art: Artifact,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_token_id: int | list[int] | tuple[int, ...] | None = None,
    weights=None,
) -> list[int]:
    """Greedy new tokens for one prompt through the generation engine on the reference
    interpreter (any form: llmc/runtimes.py); generation stops after any of the eos ids
    (an int or a sequence of ints)."""
    from llmc.runtime.engine import Engine, GenerationParams

    from .runtimes import reference_model

    stop = tuple(sorted(eos_ids(eos_token_id)))
    check_prompt(art.report.get("config", {}), prompt_ids, max_new_tokens)
    params = GenerationParams(max_new_tokens=max_new_tokens, eos_token_id=stop)
    return Engine(reference_model(art, weights)).generate([prompt_ids], params).tokens[0]
