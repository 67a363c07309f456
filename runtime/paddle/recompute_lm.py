"""A full-form graph on the Paddle runtime as the engine's `CausalLM`, by recomputing each
row from position 0 (runtime/recompute.py), with the kernel report of its program."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from llmc.compiler.ir import Graph

from ..recompute import RecomputeLM
from .lower import PaddleProgram


class PaddleRecomputeLM(RecomputeLM):
    """`RecomputeLM` over `PaddleProgram(graph).logits`; `kernels.report()` says which
    Paddle kernel each op kind runs with."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], *, device: str = "cpu",
                 max_positions: int | None = None):
        program = PaddleProgram(graph, weights, device=device, trainable=False)
        super().__init__(program.logits, int(graph.outputs[0].type.shape[-1]), max_positions)
        self.kernels = program.kernels
