"""The numeric golden helper: a graph before vs after passes, on the reference interpreter."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from llmc import api
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import PassContext
from llmc.compiler.text import parse, print_graph
from llmc.compiler.verifier import verify
from llmc.runtime.reference import random_inputs, random_weights, run


class NonFiniteReference(AssertionError):
    """The unoptimised graph gave inf/NaN on these inputs: comparing would prove nothing."""


def check_pass_numerics(graph: Graph | str, pipeline: str, dims: Mapping[str, int] | None = None,
                        seeds: tuple[int, ...] = (0, 1), rtol: float = 1e-5, atol: float = 1e-5,
                        weights: Mapping[str, np.ndarray] | None = None,
                        int_high: Mapping[str, int] | None = None,
                        ctx: PassContext | None = None,
                        inputs: Mapping[str, np.ndarray] | None = None,
                        nonfinite: str = "refuse") -> Graph:
    """Run `pipeline` on a copy of `graph`, verify it, and compare outputs on fresh random
    inputs (one draw per seed; `inputs` pins some of them). Returns the transformed graph.

    A reference output with inf/NaN raises NonFiniteReference (`nonfinite="refuse"`), or
    (`"match"`) must be matched exactly: NaN where it has NaN, the same infinities, the
    finite entries within tolerance."""
    before = parse(graph) if isinstance(graph, str) else parse(print_graph(graph))
    after = parse(print_graph(before))
    api.run_pipeline(after, pipeline, ctx=ctx)
    verify(after)
    dims = dict(dims or {})
    w = dict(weights) if weights is not None else random_weights(before, dims)
    for seed in seeds:
        ins = {**random_inputs(before, dims, seed=seed, int_high=int_high), **(inputs or {})}
        want = run(before, ins, w)
        got = run(after, ins, w)
        assert len(want) == len(got)
        for i, (a, b) in enumerate(zip(want, got)):
            if nonfinite == "refuse" and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise NonFiniteReference(f"output {i} of the graph before '{pipeline}' is not finite")
            assert a.shape == b.shape and a.dtype == b.dtype, f"output {i}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
            np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=rtol,
                                       equal_nan=nonfinite == "match",
                                       atol=atol, err_msg=f"output {i} differs after '{pipeline}'")
    return after


def check_generation_numerics(before: Graph, after: Graph, weights: Mapping[str, np.ndarray],
                              prompts: list[list[int]], new_tokens: int, tol: float):
    """Inference-form graphs before vs after passes: prefill logits, then one decode step.

    Returns the two generators and their sessions for further checks (caches, generate)."""
    from llmc.runtime.generate import Generator

    gb, ga = Generator(before, weights), Generator(after, weights)
    sb, lb = gb.prefill(prompts, new_tokens)
    sa, la = ga.prefill(prompts, new_tokens)
    np.testing.assert_allclose(la, lb, rtol=tol, atol=tol)
    tok = np.argmax(lb, -1)
    np.testing.assert_allclose(ga.decode(sa, tok), gb.decode(sb, tok), rtol=tol, atol=tol)
    return gb, ga, sb, sa
