"""The generation engine's contract (runtime/engine.py `CausalLM`) over an inference-form
graph (the ascend910b artifact: PaddleNLP block attention, paged KV cache) on the
reference interpreter, through runtime/generate.py's `Generator`.

Each cache row is one sequence of the paged session. A call runs the asked rows and
feeds the others nothing (`seq_lens_this_time` 0), so the engine's per-row prefill and
its batched decode map onto the graph's own encoder and decoder steps. A continuation
(new tokens after a cached prefix: a chat's next turn) goes in one token at a time,
since the graph's encoder step always starts at position 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from llmc.compiler.ir import Graph

from .generate import GenerationError, Generator, Session


class PagedLM:
    """An inference-form graph as a `CausalLM` (the cache is a `generate.Session`), run by
    the reference `Generator` or by a subclass of it given as `generator` (Paddle's)."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray],
                 generator: Generator | None = None):
        self.generator = generator or Generator(graph, weights)
        self.max_positions = self.generator.max_positions
        vocab = graph.outputs[0].type.shape[-1]
        if not isinstance(vocab, int):
            raise GenerationError(f"graph @{graph.name}: the logits' vocabulary is not static")
        self.vocab_size = vocab

    def new_cache(self, batch: int, max_len: int) -> Session:
        """A paged session of `batch` sequences of up to `max_len` tokens."""
        return self.generator.new_session(batch, max_len)

    def forward(self, cache: Session, rows: Sequence[int], input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """Logits [len(rows), vocab] of each row's last new token; writes the rows' KV."""
        rows = [int(r) for r in rows]
        ids = np.asarray(input_ids, np.int64)
        past = np.asarray(past_lens, np.int64)
        if ids.shape[0] != len(rows) or past.shape != (len(rows),):
            raise GenerationError(f"forward: {len(rows)} rows, input_ids {list(ids.shape)}, "
                                  f"past_lens {list(past.shape)}")
        if ids.shape[1] > 1 and (past > 0).any():
            logits = None
            for t in range(ids.shape[1]):
                logits = self._run(cache, rows, ids[:, t:t + 1], past + t)
            return logits
        return self._run(cache, rows, ids, past)

    def _run(self, cache: Session, rows: list[int], ids: np.ndarray,
             past: np.ndarray) -> np.ndarray:
        batch, seq = len(cache.lengths), ids.shape[1]
        feed = np.zeros((batch, seq), np.int64)
        this_time, enc, dec = (np.zeros(batch, np.int32) for _ in range(3))
        feed[rows] = ids
        this_time[rows] = seq
        enc[rows] = np.where(past == 0, seq, 0)
        dec[rows] = past
        logits = self.generator.step(cache, feed, this_time, enc, dec)
        cache.lengths[rows] = past + seq
        return np.asarray(logits)[rows]
