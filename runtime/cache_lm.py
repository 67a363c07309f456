"""The generation engine's contract (runtime/engine.py `CausalLM`) over a cache-form graph
(frontends/cache_form.py) on the reference interpreter: the executable spec the ONNX
Runtime backend (runtime/onnx/session.py) is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph

from .reference import run


def cache_inputs(graph: Graph) -> list[str]:
    """The past key/value inputs of a cache-form graph, in order (an error for other forms)."""
    names = [v.name for v in graph.inputs if v.name.startswith(("past_key_", "past_value_"))]
    if not names or "past_lens" not in {v.name for v in graph.inputs}:
        raise LlmcError(f"graph @{graph.name} is not a cache-form graph (no past_lens / "
                        "past_key_* inputs); compile with --form cache")
    return names


@dataclass
class ReferenceCache:
    """One [batch, kv_heads, max_len, head_dim] array per past input."""

    buffers: dict[str, np.ndarray]
    max_len: int


class ReferenceCacheLM:
    """A compiled cache-form graph run by the reference interpreter, row span by row span."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray],
                 max_positions: int | None = None):
        self.graph, self.weights, self.max_positions = graph, weights, max_positions
        self.pasts = cache_inputs(graph)
        by_name = {v.name: v for v in graph.inputs}
        _, self.kv_heads, _, self.head_dim = by_name[self.pasts[0]].type.shape
        self.vocab_size = int(graph.outputs[0].type.shape[-1])

    def new_cache(self, batch: int, max_len: int) -> ReferenceCache:
        """Zeroed buffers for `batch` rows of `max_len` positions."""
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        return ReferenceCache({n: np.zeros(shape, np.float32) for n in self.pasts}, max_len)

    def forward(self, cache: ReferenceCache, rows: Sequence[int], input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """Logits [len(rows), vocab] of each row's last new token; writes the rows' KV."""
        idx = np.asarray(list(rows), np.int64)
        feeds = {n: buf[idx] for n, buf in cache.buffers.items()}
        outs = run(self.graph, {"input_ids": np.asarray(input_ids, np.int64),
                                "past_lens": np.asarray(past_lens, np.int64), **feeds},
                   self.weights)
        for name, present in zip(self.pasts, outs[1:]):
            cache.buffers[name][idx] = present
        return outs[0]
