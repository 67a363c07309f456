"""The generation engine's contract (runtime/engine.py `CausalLM`) over an inference-form
graph (the ascend910b artifact: PaddleNLP block attention over a paged KV cache) lowered
to Paddle: what `llmc generate --runtime paddle` drives for an ascend910b artifact.

It is runtime/paged_lm.py's `PagedLM` with the paged `Generator`'s two device-facing
steps replaced: the caches are Paddle tensors on the device (the attention writes them in
place) and each step runs the graph through `PaddleProgram`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from llmc.compiler.ir import Graph

from ..generate import Generator, Session
from ..paged_lm import PagedLM
from .lower import PADDLE_DTYPES, PaddleProgram


class PaddleGenerator(Generator):
    """The paged generator with Paddle caches and steps on `device` (`program`: the graph
    already lowered, e.g. one rank's DistProgram of a sharded graph)."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], device: str = "cpu",
                 program: PaddleProgram | None = None):
        super().__init__(graph, weights)
        self.program = program or PaddleProgram(graph, weights, device=device, trainable=False)
        self.paddle = self.program.paddle

    def _alloc(self, batch: int, max_tokens: int) -> tuple[np.ndarray, dict]:
        tables, caches = super()._alloc(batch, max_tokens)  # (np.zeros: not yet touched)
        dtype = PADDLE_DTYPES[self.cache_inputs[0].type.dtype]
        return tables, {name: self.paddle.zeros(list(c.shape), dtype)
                        for name, c in caches.items()}

    def step(self, s: Session, ids: np.ndarray, this_time, enc, dec) -> np.ndarray:
        """One run of the graph on the device (see Generator.step); the logits as numpy."""
        feeds = {"input_ids": np.asarray(ids, np.int64),
                 "seq_lens_this_time": np.asarray(this_time, np.int32),
                 "seq_lens_encoder": np.asarray(enc, np.int32),
                 "seq_lens_decoder": np.asarray(dec, np.int32), "block_tables": s.tables,
                 **s.caches}
        with self.paddle.no_grad():
            outs = self.program(feeds)
        for v, t in zip(self.cache_inputs, outs[1:]):
            s.caches[v.name] = t
        return outs[0].numpy()


class PaddlePagedLM(PagedLM):
    """An inference-form graph on the Paddle runtime as a `CausalLM`; `kernels.report()`
    says which Paddle kernel each op kind runs with."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], *, device: str = "cpu",
                 program: PaddleProgram | None = None):
        generator = PaddleGenerator(graph, weights, device, program)
        super().__init__(graph, weights, generator)
        self.kernels = generator.program.kernels
