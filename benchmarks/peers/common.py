"""Shared types of the generation benchmark: model configs, cases, timings, peak-RSS probes."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[1]
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"
THREADS = 2

# HF LlamaConfig fields of the two benchmarked shapes (random fp32 weights, vocab 32000).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-134m": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
        intermediate_size=2048, vocab_size=32000,
    ),
    "llama-1.1b": dict(
        hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
        intermediate_size=5632, vocab_size=32000,
    ),
    # Only for the conversion checks (tests, --check): small enough to build in a second.
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=512,
    ),
}


class PeerUnavailable(Exception):
    """A peer cannot run here (package missing, llmc runtime not built yet); the message is
    the reason shown in its result row."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured point: prompt length, new tokens (greedy) and batch size."""

    prompt_len: int
    new_tokens: int
    batch: int

    @property
    def label(self) -> str:
        return f"p{self.prompt_len}/n{self.new_tokens}/b{self.batch}"


@dataclasses.dataclass
class Timing:
    """What a peer reports for one generation: ``ttft_s`` from prompt in to the first new
    token out (prefill plus the first sampling), ``decode_s`` for the remaining
    ``new_tokens - 1`` tokens, and the generated ids per batch row."""

    ttft_s: float
    decode_s: float
    tokens: list[list[int]]


def prompt_ids(case: Case, vocab: int, seed: int = 1234) -> list[list[int]]:
    """Deterministic prompts: ``batch`` rows of ``prompt_len`` ids in [3, vocab) (no
    bos/eos/unk inside), different per row, the same for every peer."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = rng.integers(3, vocab, size=(case.batch, case.prompt_len))
    return rows.tolist()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process since start or the last reset, MiB."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5) so the next peak covers only the
    generation, not model loading; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def progress(msg: str) -> None:
    """One progress line on stderr (stdout carries the worker's JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pin_threads(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment with every thread pool this benchmark touches set to THREADS."""
    env = dict(os.environ if env is None else env)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(THREADS)
    return env
