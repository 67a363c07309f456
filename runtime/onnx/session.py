"""The ONNX Runtime backend of the generation engine (runtime/engine.py `CausalLM`), on a
cache-form model exported by export.py.

The KV state is one buffer per layer and per key/value, [batch, kv_heads, max_len,
head_dim], allocated once. Every call binds the rows it runs (a contiguous span of each
buffer) through IOBinding as both the past input and the present output of
GroupQueryAttention, so the op writes the new keys and values in place and a decode
step never copies the cache.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph

from .export import MODEL_FILE, export

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session_options(threads: int = 2, profile_prefix: str | None = None) -> ort.SessionOptions:
    """What a fast decode wants: a few intra-op threads that spin between kernels, every
    graph optimization, sequential execution."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def provider_list(provider: str) -> list[str]:
    """ONNX Runtime providers for `provider` ('cpu' or 'cuda'), or a clear error."""
    if provider not in PROVIDERS:
        raise LlmcError(f"--provider must be one of {', '.join(PROVIDERS)}, got '{provider}'")
    want = PROVIDERS[provider]
    if want not in ort.get_available_providers():
        raise LlmcError(f"--provider {provider}: this onnxruntime ({ort.__version__}) has no "
                        f"{want}; install onnxruntime-gpu with a CUDA GPU, or use --provider cpu")
    return [want] if provider == "cpu" else [want, "CPUExecutionProvider"]


@dataclass
class KVCache:
    """Per-layer key/value buffers and the tokens each row holds."""

    buffers: list[tuple[str, str, ort.OrtValue]]  # (past input, present output, buffer)
    lengths: np.ndarray  # int64 [batch]
    max_len: int
    row_shape: tuple[int, int, int]  # kv_heads, max_len, head_dim
    bindings: dict = field(default_factory=dict)  # (first row, end row) -> (IOBinding, logits)


class OrtCausalLM:
    """A cache-form ONNX model on ONNX Runtime, driven through IOBinding."""

    def __init__(self, model_path: str | Path, provider: str = "cpu", threads: int = 2,
                 profile_prefix: str | None = None):
        self.path = Path(model_path)
        self.device = provider
        self.session = ort.InferenceSession(str(self.path), session_options(threads, profile_prefix),
                                            providers=provider_list(provider))
        ins = {i.name: i for i in self.session.get_inputs()}
        self.pasts = [n for n in ins if n.startswith(("past_key_", "past_value_"))]
        if "past_lens" not in ins or not self.pasts:
            raise LlmcError(f"{self.path}: not a cache-form model (no past_lens / past_key_* "
                            "inputs); compile with --form cache")
        _, kv_heads, _, head_dim = ins[self.pasts[0]].shape
        self.kv_heads, self.head_dim = int(kv_heads), int(head_dim)
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.max_positions = int(meta["max_positions"]) if "max_positions" in meta else None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @classmethod
    def from_graph(cls, graph: Graph, weights, *, max_positions: int, target: str = "cpu",
                   workdir: str | Path | None = None, **kw) -> "OrtCausalLM":
        """Export `graph` (a compiled cache-form graph) to `workdir` (a temporary directory
        kept as long as the model lives, by default) and open it."""
        tmp = None
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="llmc-onnx-")
            workdir = tmp.name
        export(graph, weights, workdir, target=target, max_positions=max_positions, check=False)
        model = cls(Path(workdir) / MODEL_FILE, **kw)
        model._tmp = tmp
        return model

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """Zeroed buffers for `batch` rows of `max_len` positions each."""
        if self.max_positions is not None and max_len > self.max_positions:
            raise LlmcError(f"a {max_len}-position cache exceeds the model's {self.max_positions} "
                            "positions")
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        bufs = []
        for name in self.pasts:
            val = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), self.device, 0)
            bufs.append((name, "present_" + name[len("past_"):], val))
        return KVCache(bufs, np.zeros(batch, np.int64), max_len, shape[1:])

    def forward(self, cache: KVCache, rows: Sequence[int], input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """Logits [len(rows), vocab] of each row's last new token; writes the rows' new keys
        and values into the cache in place. Rows between those asked for (finished ones)
        run too, on a dummy token at their own end, and their results are dropped."""
        rows = [int(r) for r in rows]
        ids = np.asarray(input_ids, np.int64)
        past = np.asarray(past_lens, np.int64)
        seq = ids.shape[1]
        if ids.shape[0] != len(rows) or past.shape != (len(rows),):
            raise LlmcError(f"forward: {len(rows)} rows, input_ids {list(ids.shape)}, "
                            f"past_lens {list(past.shape)}")
        if (past < 0).any() or (past + seq > cache.max_len).any():
            raise LlmcError(f"forward: {int(past.max())} cached + {seq} new tokens overflow the "
                            f"{cache.max_len}-position cache")
        lo, hi = min(rows), max(rows) + 1
        span_ids, span_past = ids, past
        contiguous = rows == list(range(lo, hi))
        if len(set(rows)) != len(rows):
            raise LlmcError(f"forward: rows {rows} repeat a row")
        if not contiguous:
            span_past = np.minimum(cache.lengths[lo:hi], cache.max_len - seq)
            span_ids = np.zeros((hi - lo, seq), np.int64)
            idx = np.asarray(rows) - lo
            span_ids[idx], span_past[idx] = ids, past
        logits = self._run(cache, lo, hi, np.ascontiguousarray(span_ids), span_past)
        cache.lengths[rows] = past + seq
        return logits if contiguous else logits[np.asarray(rows) - lo]

    def _run(self, cache: KVCache, lo: int, hi: int, ids: np.ndarray,
             past: np.ndarray) -> np.ndarray:
        io, logits = cache.bindings.get((lo, hi)) or self._bind(cache, lo, hi)
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("past_lens", np.ascontiguousarray(past))
        self.session.run_with_iobinding(io)
        return logits.copy() if logits is not None else io.copy_outputs_to_cpu()[0]

    def _bind(self, cache: KVCache, lo: int, hi: int):
        """An IOBinding of rows lo..hi-1 of every buffer as both past and present (kept in
        the cache: a decode step then only rebinds its token ids and lengths)."""
        io = self.session.io_binding()
        shape = [hi - lo, *cache.row_shape]
        row_bytes = 4 * int(np.prod(cache.row_shape))
        for past_name, present_name, buf in cache.buffers:
            ptr = buf.data_ptr() + lo * row_bytes
            io.bind_input(past_name, self.device, 0, np.float32, shape, ptr)
            io.bind_output(present_name, self.device, 0, np.float32, shape, ptr)
        logits = None
        if self.device == "cpu":
            logits = np.empty((hi - lo, self.vocab_size), np.float32)
            io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        else:
            io.bind_output("logits", self.device)
        cache.bindings[lo, hi] = (io, logits)
        return io, logits
