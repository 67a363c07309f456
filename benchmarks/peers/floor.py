"""The physical floor: memory bandwidth (a large fp32 gemv, plus a plain copy for reference)
and sgemm FLOP/s measured with numpy in this run, and the best decode/prefill rates they
allow for a given model and case."""

from __future__ import annotations

import time
from typing import Any

from .checkpoint import decode_weight_bytes
from .common import THREADS, Case

GEMV_SHAPE = (16384, 8192)  # 512 MiB fp32: far past any cache
SGEMM_N = 2048


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def blas_info() -> dict[str, Any]:
    """The BLAS numpy runs here (library, kernel, threads), via threadpoolctl when present."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"note": "threadpoolctl not installed"}
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    keep = ("internal_api", "version", "architecture", "num_threads")
    return {k: pools[0].get(k) for k in keep} if pools else {}


def measure(repeat: int = 7) -> dict[str, Any]:
    """GB/s of a gemv and a copy, GFLOP/s of an sgemm, on THREADS BLAS threads (run it in a
    process whose OPENBLAS_NUM_THREADS is THREADS; OPENBLAS_CORETYPE left unset there)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal(GEMV_SHAPE, dtype=np.float32)
    x = rng.standard_normal(GEMV_SHAPE[1], dtype=np.float32)
    y = rng.standard_normal(GEMV_SHAPE[0], dtype=np.float32)
    # both orientations (OpenBLAS's N and T kernels): the faster one is the floor
    gemv_s = min(_best(lambda: a @ x, repeat), _best(lambda: y @ a, repeat))
    dst = np.empty_like(a)
    copy_s = _best(lambda: np.copyto(dst, a), repeat)
    dst = None  # free 512 MiB before the sgemm
    m = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    sgemm_s = _best(lambda: m @ m, repeat)
    return {
        "gemv_gb_s": a.nbytes / gemv_s / 1e9,
        "copy_gb_s": 2 * a.nbytes / copy_s / 1e9,
        "sgemm_gflop_s": 2 * SGEMM_N**3 / sgemm_s / 1e9,
        "threads": THREADS,
        "blas": blas_info(),
    }


def prefill_flops(cfg: dict[str, Any], case: Case) -> float:
    """FLOPs a prefill cannot avoid: every layer matmul on every prompt token, causal
    attention scores and mix, and the lm_head on the last token only."""
    h, vocab, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    lm_head_params = vocab * h
    layer_params = decode_weight_bytes(cfg) // 4 - lm_head_params
    tokens = case.batch * case.prompt_len
    attention = 2 * layers * case.batch * case.prompt_len**2 * h  # QK^T + AV, causal half
    return 2 * layer_params * tokens + attention + 2 * lm_head_params * case.batch


def floor_rates(cfg: dict[str, Any], case: Case, measured: dict[str, Any]) -> dict[str, float]:
    """Best decode tok/s (all rows), prefill tok/s and time to first token the measured
    bandwidth and FLOP/s allow: a decode step streams the weights once for the whole batch
    and can be no faster than its matmul FLOPs."""
    weight_bytes = decode_weight_bytes(cfg)
    flop_s = measured["sgemm_gflop_s"] * 1e9
    step_s = max(weight_bytes / (measured["gemv_gb_s"] * 1e9),
                 2 * (weight_bytes / 4) * case.batch / flop_s)
    prefill_s = max(prefill_flops(cfg, case) / flop_s,
                    weight_bytes / (measured["gemv_gb_s"] * 1e9))
    return {
        "decode_tok_s": case.batch / step_s,
        "prefill_tok_s": case.batch * case.prompt_len / prefill_s,
        "ttft_s": prefill_s,
        "weight_bytes": weight_bytes,
    }
