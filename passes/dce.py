"""Dead code elimination."""

from __future__ import annotations

from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import define_pass


def dce(g: Graph) -> int:
    n = 0
    for op in reversed(g.ops):
        if g.is_dead(op):
            g.erase(op)
            n += 1
    return n


define_pass("dce", "Erase ops whose results are never used (every op is pure).", dce)
