"""Which runtime runs an artifact, opened as the generation engine's `CausalLM`.

* `onnxruntime`: a cache-form artifact (the per-op targets' default) exported to ONNX
  (kept in ARTIFACT/onnx) and run by `OrtCausalLM` on the CPU or CUDA provider.
* `paddle`: the Paddle runtime (runtime/paddle/) on `--device cpu|gpu|npu|mlu|iluvatar_gpu`:
  a cache-form artifact → `PaddleCacheLM` (KV buffers on the device), ascend910b's
  inference form → `PaddlePagedLM` (paged caches on the device), a full-form one by
  recomputing the sequence. Each model's `kernels.report()` says which Paddle kernel each
  op kind runs with (`paddle_kernels`).
* `reference`: the numpy interpreter, whatever the form: cache form → `ReferenceCacheLM`,
  full form → `RecomputeLM` (no cache: each step recomputes the sequence), ascend910b's
  inference form → `PagedLM` (the paged block-attention cache).

onnxruntime is the default wherever the artifact lowers (the cache form); the reference
interpreter otherwise (`llmc generate` and `llmc chat` choose with `--runtime`,
llmc/cli_generate.py).
"""

from __future__ import annotations

from .artifact import Artifact

RUNTIMES = ("onnxruntime", "reference", "paddle")
PROVIDERS = ("cpu", "cuda")
DEVICES = ("cpu", "gpu", "npu", "mlu", "iluvatar_gpu")  # runtime/paddle/env.py DEVICES


def default_runtime(form: str) -> str:
    """onnxruntime for a cache-form artifact, the reference interpreter for the others."""
    return "onnxruntime" if form == "cache" else "reference"


def max_positions(config: dict) -> int | None:
    """The positions a row may hold (None: no limit in the config, e.g. ALiBi)."""
    value = config.get("max_position_embeddings")
    return int(value) if value else None


def reference_model(art: Artifact, weights=None):
    """The artifact's graph on the reference interpreter, as a `CausalLM`."""
    from llmc.runtime.cache_lm import ReferenceCacheLM
    from llmc.runtime.paged_lm import PagedLM
    from llmc.runtime.recompute import RecomputeLM

    w = weights if weights is not None else art.weights()
    form, limit = art.report.get("form"), max_positions(art.report.get("config", {}))
    if form == "cache":
        return ReferenceCacheLM(art.graph, w, limit)
    if form == "inference":
        return PagedLM(art.graph, w)
    return RecomputeLM.from_graph(art.graph, w, limit)


def paddle_model(art: Artifact, device: str = "cpu", weights=None):
    """The artifact's graph on the Paddle runtime, as a `CausalLM` with a `kernels` report."""
    from llmc.runtime.paddle import PaddleCacheLM, PaddlePagedLM, PaddleRecomputeLM

    form, limit = art.report.get("form"), max_positions(art.report.get("config", {}))
    w = weights if weights is not None else art.weights()
    if form == "cache":
        return PaddleCacheLM(art.graph, w, device=device, max_positions=limit)
    if form == "inference":
        return PaddlePagedLM(art.graph, w, device=device)
    return PaddleRecomputeLM(art.graph, w, device=device, max_positions=limit)


def paddle_kernels(model) -> dict[str, str] | None:
    """op kind → 'kernel (why)' of a model opened by `paddle_model` (None for the others)."""
    kernels = getattr(model, "kernels", None)
    return kernels.report() if kernels is not None else None


def eos_of(config: dict) -> int | tuple[int, ...] | None:
    """The artifact config's `eos_token_id`: an int, several, or None."""
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        return tuple(int(e) for e in eos)
    return eos
