"""The generation engine's contract (runtime/engine.py `CausalLM`) over a cache-form graph
lowered to Paddle: what `llmc generate --runtime paddle` drives for a per-op target's
artifact (compiled with --form cache). KV buffers stay Paddle tensors on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph

from .lower import PaddleProgram


@dataclass
class PaddleCache:
    """One [batch, kv_heads, max_len, head_dim] tensor per past input."""

    buffers: dict
    max_len: int


class PaddleCacheLM:
    """A compiled cache-form graph run by PaddleProgram (no autograd), row span by span;
    `kernels.report()` says which Paddle kernel each op kind runs with."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], *, device: str = "cpu",
                 max_positions: int | None = None):
        names = [v.name for v in graph.inputs if v.name.startswith(("past_key_", "past_value_"))]
        if not names or "past_lens" not in {v.name for v in graph.inputs}:
            raise LlmcError(f"graph @{graph.name} is not a cache-form graph (no past_lens / "
                            "past_key_* inputs); compile with --form cache")
        self.pasts = names
        self.program = PaddleProgram(graph, weights, device=device, trainable=False)
        self.kernels = self.program.kernels
        self.paddle = self.program.paddle
        by_name = {v.name: v for v in graph.inputs}
        _, self.kv_heads, _, self.head_dim = by_name[names[0]].type.shape
        self.vocab_size = int(graph.outputs[0].type.shape[-1])
        self.max_positions = max_positions

    def new_cache(self, batch: int, max_len: int) -> PaddleCache:
        """Zeroed buffers for `batch` rows of `max_len` positions."""
        shape = [batch, self.kv_heads, max_len, self.head_dim]
        return PaddleCache({n: self.paddle.zeros(shape, "float32") for n in self.pasts}, max_len)

    def forward(self, cache: PaddleCache, rows: Sequence[int], input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """Logits [len(rows), vocab] of each row's last new token; writes the rows' KV."""
        p = self.paddle
        idx = p.to_tensor(np.asarray(list(rows), np.int64))
        feeds = {n: p.gather(buf, idx) for n, buf in cache.buffers.items()}
        feeds["input_ids"] = np.asarray(input_ids, np.int64)
        feeds["past_lens"] = np.asarray(past_lens, np.int64)
        with p.no_grad():
            outs = self.program(feeds)
        for name, present in zip(self.pasts, outs[1:]):
            cache.buffers[name] = p.scatter(cache.buffers[name], idx, present, overwrite=True)
        return outs[0].numpy()
