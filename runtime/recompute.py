"""A `CausalLM` (runtime/engine.py) with no key/value cache: it recomputes each row from
position 0 on every call.

It drives any full-sequence logits function, such as a full-form graph on the reference
interpreter (`RecomputeLM.from_graph`), so the engine's sampling, batching and streaming
work there too, slowly; and it is the oracle a cached backend is compared with.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from llmc.compiler.ir import Graph

from .generate import GenerationError, full_logits

LogitsFn = Callable[[np.ndarray], np.ndarray]


class RecomputeLM:
    """The engine's contract over `logits_fn(ids [n, seq]) -> logits [n, seq, vocab]`
    (positions 0..seq-1); the "cache" holds each row's tokens."""

    def __init__(self, logits_fn: LogitsFn, vocab_size: int, max_positions: int | None = None):
        self.logits_fn = logits_fn
        self.vocab_size, self.max_positions = vocab_size, max_positions

    @classmethod
    def from_graph(cls, graph: Graph, weights: Mapping[str, np.ndarray],
                   max_positions: int | None = None) -> "RecomputeLM":
        """Over a full-form graph (input_ids, position_ids -> logits) on the reference
        interpreter."""
        if {v.name for v in graph.inputs} != {"input_ids", "position_ids"}:
            raise GenerationError(f"graph @{graph.name} is not a full-form graph "
                                  "(inputs input_ids, position_ids)")
        vocab = graph.outputs[0].type.shape[-1]
        if not isinstance(vocab, int):
            raise GenerationError(f"graph @{graph.name}: the logits' vocabulary is not static")
        return cls(lambda ids: full_logits(graph, weights, ids), vocab, max_positions)

    def new_cache(self, batch: int, max_len: int) -> list[list[int]]:
        """Each row's tokens so far (nothing is preallocated: there is nothing to keep)."""
        return [[] for _ in range(batch)]

    def forward(self, cache: list[list[int]], rows: Sequence[int], input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """Logits of each row's last new token, from its whole sequence."""
        by_length: dict[int, list[int]] = {}
        for j, (row, past) in enumerate(zip(rows, past_lens)):
            tokens = cache[row]
            if past > len(tokens):
                raise GenerationError(f"row {row}: past_len {past} but {len(tokens)} tokens held")
            tokens[past:] = [int(t) for t in input_ids[j]]
            by_length.setdefault(len(tokens), []).append(j)
        out = np.zeros((len(rows), self.vocab_size), np.float32)
        for js in by_length.values():
            ids = np.asarray([cache[rows[j]] for j in js], np.int64)
            out[js] = self.logits_fn(ids)[:, -1]  # (graphs may return the last position only)
        return out
