"""Training-time randomness on the Paddle runtime: dropout on chosen linears' inputs, and the
random generators' state as JSON-ready data for checkpoints.

Dropout here is a behaviour of a training step, not of the graph: the graph (and every
inference, eval or merge of it) computes `linear(x, W)`; a Trainer given
`input_dropout={W's name: p}` feeds that linear `dropout(x, p)` instead, during its own
training steps only. LoRA uses it for PEFT's `lora_B(lora_A(dropout(x)))`: the rate goes on
each adapter's A weight, so the base linear reading the same `x` sees it undropped.

Paddle's generator (which dropout draws from) and numpy's and Python's global generators are
saved by `rng_state()` and put back by `set_rng_state()`, so a resumed run draws what the
uninterrupted one would have. llmc's samplers do not draw from any of them (their order is a
pure function of seed, epoch and position, saved with the data position).
"""

from __future__ import annotations

import random
from collections import ChainMap
from typing import Callable, Mapping

import numpy as np

from llmc.compiler.errors import LlmcError


def apply_input_dropout(program, rates: Mapping[str, float], active: Callable[[], bool]) -> int:
    """Make each `linear` of `program` whose weight is a parameter named in `rates` see its
    input `x` through dropout(p) while `active()`; returns how many linears were wrapped.
    A rate naming no linear weight is an error (it would silently do nothing)."""
    dropout = program.paddle.nn.functional.dropout
    wrapped: set[str] = set()
    for i, (op, step) in enumerate(program.steps):
        w = op.operand("w") if op.kind == "linear" else None
        rate = rates.get(w.name, 0.0) if w is not None and w.is_param else 0.0
        if not rate:
            continue
        x = op.operand("x")

        def run(env, step=step, x=x, rate=rate):
            if not active():
                return step(env)
            return step(ChainMap({x: dropout(env[x], p=rate, training=True)}, env))

        program.steps[i] = (op, run)
        wrapped.add(w.name)
    unknown = sorted(n for n, r in rates.items() if r and n not in wrapped)
    if unknown:
        raise LlmcError(f"input_dropout: parameter '{unknown[0]}' is not the weight of a linear "
                        "in the graph")
    return len(wrapped)


def check_rates(rates: Mapping[str, float]) -> None:
    """Refuse a dropout rate outside [0, 1), naming the parameter."""
    for name, rate in rates.items():
        if not 0.0 <= rate < 1.0:
            raise LlmcError(f"input_dropout of '{name}' must be in [0, 1), got {rate}")


def rng_state(paddle) -> dict:
    """Paddle's generators (one per device), numpy's and Python's global generator state,
    as JSON-ready data."""
    gens = []
    for g in paddle.get_rng_state():
        device, seed, offset, engine = g.__getstate__()  # what pickling the state uses
        gens.append({"device": int(device), "seed": int(seed), "offset": int(offset),
                     "engine": bytes(engine).decode("ascii")})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"paddle": gens,
            "numpy": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss": gauss_next}}


def set_rng_state(paddle, state: Mapping, where: str = "rng state") -> None:
    """Put back what `rng_state()` returned; a malformed state is an error naming `where`."""
    from paddle.base.libpaddle import GeneratorState

    try:
        gens = []
        for g in state["paddle"]:
            s = GeneratorState.__new__(GeneratorState)
            s.__setstate__((int(g["device"]), int(g["seed"]), int(g["offset"]),
                            list(g["engine"].encode("ascii"))))
            gens.append(s)
        if len(gens) != len(paddle.get_rng_state()):
            raise ValueError(f"{len(gens)} Paddle generators saved, "
                             f"{len(paddle.get_rng_state())} here")
        n = state["numpy"]
        np_state = (n["kind"], np.asarray(n["keys"], dtype=np.uint32), int(n["pos"]),
                    int(n["has_gauss"]), float(n["gauss"]))
        py = state["python"]
        py_state = (int(py["version"]), tuple(int(v) for v in py["internal"]), py["gauss"])
        paddle.set_rng_state(gens)
        np.random.set_state(np_state)
        random.setstate(py_state)
    except Exception as e:  # pybind, numpy and random raise many types on bad input
        raise LlmcError(f"{where}: corrupt random generator state ({type(e).__name__}: "
                        f"{e})") from None
