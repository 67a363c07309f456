"""Splitting a graph's op list into per-layer segments, for activation recompute.

An op belongs to decoder layer N when it reads a parameter named `...layers.N....`; an
op that reads no parameter stays in the segment before it (the residual adds, the
attention core); ops before the first layer and from the first non-layer parameter on
(the final norm, lm_head) are not layers. A segment's inputs are the values it reads
from before it (parameters aside), its outputs the values read after it or returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmc.compiler.ir import Graph, Value

LAYER_PARAM = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class Segment:
    """Consecutive ops [start, stop) of one layer (`layer` None: not a layer)."""

    layer: int | None
    start: int
    stop: int
    inputs: list[Value]
    outputs: list[Value]


def op_layers(graph: Graph) -> list[int | None]:
    """The layer of each op (None outside the layers)."""
    labels: list[int | None] = []
    current: int | None = None
    for op in graph.ops:
        params = [v.name for v in op.inputs if v.is_param]
        layers = [int(m.group(1)) for m in map(LAYER_PARAM.search, params) if m]
        if layers:
            current = max(layers)
        elif params:
            current = None
        labels.append(current)
    return labels


def segments(graph: Graph) -> list[Segment]:
    """The graph's ops as runs of one layer label, with each run's inputs and outputs."""
    ops, labels = graph.ops, op_layers(graph)
    bounds = [0] + [i for i in range(1, len(ops)) if labels[i] != labels[i - 1]] + [len(ops)]
    last_use: dict[Value, int] = {}
    for i, op in enumerate(ops):
        for v in op.inputs:
            if not v.is_param:
                last_use[v] = i
    returned = set(graph.outputs)
    out = []
    for start, stop in zip(bounds, bounds[1:]):
        made = {v: i for i in range(start, stop) for v in ops[i].outputs}
        used = {v for i in range(start, stop) for v in ops[i].inputs if not v.is_param}
        inputs = [v for v in _ordered(used) if v not in made]
        outputs = [v for v in made if v in returned or last_use.get(v, -1) >= stop]
        out.append(Segment(labels[start], start, stop, inputs, outputs))
    return out


def _ordered(values: set[Value]) -> list[Value]:
    return sorted(values, key=lambda v: v.name)
