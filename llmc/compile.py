"""The compile driver: checkpoint (or config) → graph form → target pipeline → artifact.

An artifact directory holds `model.llmc` (the lowered IR), `pass_log.txt`,
`report.json` and `weights.json` (a manifest naming each parameter's checkpoint file,
dtype and shape: weights are never copied). It is written to a temporary directory
next to OUT and renamed into place, so OUT is either the old artifact or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import Instruments, PassContext, PassRecord
from llmc.compiler.text import print_graph
from llmc.compiler.verifier import verify

FORMS = ("inference", "full")
I64_MAX = 2**63 - 1


@dataclass
class Compiled:
    """What `compile_model` produced."""

    graph: Graph
    target: str
    form: str
    records: list[PassRecord]
    report: dict
    manifest: dict
    log: list[str]


def build_graph(cfg, naming, form: str) -> Graph:
    """The graph of `form`; a full-form generation graph returns the last token's logits."""
    from llmc.compiler.builder import make_op
    from llmc.frontends.llama import build_full, build_inference

    if form == "inference":
        return build_inference(cfg, naming)
    if form != "full":
        raise LlmcError(f"unknown graph form '{form}'; known forms: {', '.join(FORMS)}")
    g = build_full(cfg, naming)
    logits = g.outputs[0]
    sl = make_op(
        g,
        "slice",
        [logits],
        {"axes": (1,), "starts": (-1,), "ends": (I64_MAX,)},
        name="last_logits",
    )
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


def weights_manifest(g: Graph, ckpt) -> dict:
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


def compile_model(
    source: str | Path,
    target: str,
    form: str | None = None,
    instruments: Instruments | None = None,
    log: Callable[[str], None] | None = None,
    emit_ir: Callable[[str, str], None] | None = None,
) -> Compiled:
    """Import `source` (model dir or config .json), run the target's pipeline, verify."""
    from llmc import api
    from llmc.frontends.loader import open_checkpoint
    from llmc.passes.pipelines import get_target

    tgt = get_target(target)
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
    if ckpt.weights.backed:  # every parameter must be in the checkpoint, with its shape
        ckpt.validate({name: tuple(p.type.shape) for name, p in g.params.items()})
    t1 = time.perf_counter()
    ops_in = len(g)
    records = api.run_pipeline(
        g,
        tgt.spec,
        instruments,
        log=sink,
        emit_ir=emit_ir,
        ctx=PassContext(model=model_facts(cfg, form)),
    )
    verify(g)
    t2 = time.perf_counter()
    report = {
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
    }
    return Compiled(g, tgt.name, form, records, report, weights_manifest(g, ckpt), lines)


def write_artifact(c: Compiled, out: str | Path) -> Path:
    """Write the artifact directory atomically (temp dir + rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        (tmp / "model.llmc").write_text(print_graph(c.graph))
        (tmp / "pass_log.txt").write_text("\n".join(c.log) + "\n")
        (tmp / "report.json").write_text(json.dumps(c.report, indent=2) + "\n")
        (tmp / "weights.json").write_text(json.dumps(c.manifest, indent=2) + "\n")
        old = None
        if out.exists():
            if not (out / "model.llmc").exists() and any(out.iterdir()):
                raise LlmcError(
                    f"{out}: exists and is not an llmc artifact; refusing to replace it"
                )
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Artifact:
    """A compiled artifact read back: graph, report and the weights its manifest names."""

    path: Path
    graph: Graph
    report: dict
    manifest: dict

    def weights(self):
        """The checkpoint's tensors (memory-mapped), checked against the manifest."""
        from llmc.frontends.weights import WeightStore

        if not self.manifest.get("backed"):
            raise LlmcError(
                f"{self.path}: compiled from a config alone; there are no weights to run"
            )
        store = WeightStore(self.manifest["model_dir"])
        missing = [n for n in self.manifest["tensors"] if n not in store]
        if missing:
            raise LlmcError(
                f"{self.path}: checkpoint {self.manifest['model_dir']} "
                f"lacks {', '.join(missing[:3])}"
            )
        return store


def load_artifact(path: str | Path) -> Artifact:
    """Read an artifact directory written by `write_artifact`."""
    from llmc.compiler.text import parse

    p = Path(path)
    try:
        text = (p / "model.llmc").read_text()
        report = json.loads((p / "report.json").read_text())
        manifest = json.loads((p / "weights.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LlmcError(f"{p}: not a readable llmc artifact ({e})") from None
    return Artifact(p, parse(text, str(p / "model.llmc")), report, manifest)


def generate(
    art: Artifact,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_token_id: int | None = None,
    weights=None,
) -> list[int]:
    """Greedy new tokens for one prompt, on the reference interpreter (any target's artifact)."""
    import numpy as np

    from llmc.runtime.generate import Generator
    from llmc.runtime.reference import run

    w = weights if weights is not None else art.weights()
    if not prompt_ids:
        raise LlmcError("generate: the prompt has no tokens")
    if art.report.get("form") == "inference":
        return Generator(art.graph, w).generate([prompt_ids], max_new_tokens, eos_token_id)[0]
    ids, out = list(prompt_ids), []
    for _ in range(max_new_tokens):
        arr = np.asarray([ids], np.int64)
        pos = np.arange(len(ids), dtype=np.int64)[None]
        logits = run(art.graph, {"input_ids": arr, "position_ids": pos}, w)[0]
        tok = int(np.argmax(logits[0, -1]))
        out.append(tok)
        ids.append(tok)
        if tok == eos_token_id:
            break
    return out
