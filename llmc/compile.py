"""The compile driver: checkpoint (or config) → graph form → target pipeline → artifact.

An artifact directory holds `model.llmc` (the lowered IR), `pass_log.txt`,
`report.json` and `weights.json` (a manifest naming each parameter's checkpoint file,
dtype and shape: weights are never copied). It is written to a temporary directory
next to OUT and swapped into place, so OUT is either the old artifact or the new one.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
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


def build_graph(cfg, naming, form: str, last_token_only: bool = True) -> Graph:
    """The graph of `form` ('full', 'inference' or 'cache'). A full-form graph built for generation
    (`last_token_only`) returns the last token's logits, like the inference form."""
    from llmc.compiler.builder import make_op
    from llmc.frontends.llama import build_full, build_inference

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


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where
    the platform or filesystem cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Put `tmp` at `out`; an existing `out` is swapped out atomically where the
    filesystem allows, else moved aside and restored if the second rename fails."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):  # tmp now holds the old artifact
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the old artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_output(out: str | Path) -> None:
    """Refuse an OUT that is not ours to replace: a file, or a non-artifact directory."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise LlmcError(f"{out}: exists and is not an llmc artifact directory")
        if not (out / "model.llmc").exists() and any(out.iterdir()):
            raise LlmcError(f"{out}: exists and is not an llmc artifact; refusing to replace it")


def write_artifact(c: Compiled, out: str | Path) -> Path:
    """Write the artifact directory atomically: OUT is the old artifact or the new one."""
    out = Path(out)
    check_output(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise LlmcError(f"{out}: cannot create the artifact directory ({e.strerror or e})") from None
    try:
        (tmp / "model.llmc").write_text(print_graph(c.graph))
        (tmp / "pass_log.txt").write_text("\n".join(c.log) + "\n")
        (tmp / "report.json").write_text(json.dumps(c.report, indent=2) + "\n")
        (tmp / "weights.json").write_text(json.dumps(c.manifest, indent=2) + "\n")
        _swap_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LlmcError(f"{out}: cannot write the artifact ({e.strerror or e})") from None
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


def check_prompt(config: dict, prompt_ids: list[int], max_new_tokens: int) -> None:
    """Refuse a bad request before running anything: ids outside the vocabulary, an empty
    prompt, or prompt + max_new_tokens beyond max_position_embeddings (every target alike)."""
    import numpy as np

    from llmc.runtime.generate import check_length

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
    eos_token_id: int | None = None,
    weights=None,
) -> list[int]:
    """Greedy new tokens for one prompt, on the reference interpreter (any target's artifact)."""
    import numpy as np

    from llmc.runtime.generate import Generator, full_logits

    check_prompt(art.report.get("config", {}), prompt_ids, max_new_tokens)
    w = weights if weights is not None else art.weights()
    if art.report.get("form") == "inference":
        return Generator(art.graph, w).generate([prompt_ids], max_new_tokens, eos_token_id)[0]
    ids, out = list(prompt_ids), []
    for _ in range(max_new_tokens):
        tok = int(np.argmax(full_logits(art.graph, w, [ids])[0, -1]))
        out.append(tok)
        ids.append(tok)
        if tok == eos_token_id:
            break
    return out
