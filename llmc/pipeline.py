"""Running pass pipelines: the one place llmc/ reaches the pass registry.

Importing this module registers every pass (`llmc.passes`), so `run_pipeline` and
`list_passes` see them all; the API (api.py) and the compile driver (compile.py) both
use it, and neither imports the other for it.
"""

from __future__ import annotations

from typing import Callable

import llmc.passes  # noqa: F401  (registers every pass)
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import (
    PASSES,
    Instruments,
    PassContext,
    PassManager,
    PassRecord,
    parse_pipeline,
)
from llmc.passes.pipelines import pipeline_for


def run_pipeline(g: Graph, spec: str, instruments: Instruments | None = None,
                 log: Callable[[str], None] | None = None,
                 emit_ir: Callable[[str, str], None] | None = None,
                 ctx: PassContext | None = None) -> list[PassRecord]:
    """Run a pipeline spec (`dce,cse{...}`) on `g` in place; returns the pass records."""
    pm = PassManager(parse_pipeline(spec), instruments, log=log, emit_ir=emit_ir)
    return pm.run(g, ctx)


def list_passes(target: str | None = None, tp: int = 1, sequence_parallel: bool = False,
                mc2: bool | None = None) -> list[dict]:
    """Every registered pass (spec and one-line doc), or a target's pipeline in order
    (tensor-parallel when tp > 1)."""
    if target is None:
        return [{"spec": n, "doc": PASSES[n].doc()} for n in sorted(PASSES)]
    spec = pipeline_for(target, tp, sequence_parallel, mc2)
    return [{"spec": p.spec(), "doc": type(p).doc()} for p in parse_pipeline(spec)]
