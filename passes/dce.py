"""Dead code elimination."""

from __future__ import annotations

from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import Pass, PassContext, register_pass


@register_pass
class DeadCodeElimination(Pass):
    """Erase ops whose results are never used (every op is pure)."""

    name = "dce"

    def run(self, g: Graph, ctx: PassContext) -> int:
        n = 0
        for op in reversed(g.ops):
            if g.is_dead(op):
                g.erase(op)
                n += 1
        return n
