"""Choosing the next token from a row's logits: greedy, temperature, top-k, top-p and the
repetition penalty, with one numpy Generator per request so that a seed reproduces.

Order (as Hugging Face's logits processors): repetition penalty, then temperature, then
top-k, then top-p, then a draw. ``temperature == 0`` is greedy (argmax after the penalty);
``top_k == 1`` keeps only the first argmax, so it draws the greedy token whatever the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmc.compiler.errors import LlmcError


class SamplingError(LlmcError):
    """Sampling parameters out of range."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens.

    temperature: 0 for greedy, else logits are divided by it before the softmax.
    top_k: keep the k most likely tokens (0: all). top_p: keep the smallest set of most
    likely tokens whose probability reaches p (1.0: all). repetition_penalty: CTRL's
    penalty over the tokens of the prompt and the output (1.0: none). seed: the request's
    own generator (None: fresh entropy), so its draws never depend on the batch around it.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise SamplingError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        """Whether the choice is a plain argmax (no draw from the generator)."""
        return self.temperature == 0 or self.top_k == 1


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL / Hugging Face penalty: over the `seen` token ids, divide positive logits by
    `penalty` and multiply negative ones (a copy; `logits` is left alone)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or seen.size == 0:
        return out
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _top(scaled: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest values, largest first; ties go to the lowest ids."""
    if k >= scaled.size:
        cand = np.arange(scaled.size)
    else:
        kth = scaled[np.argpartition(-scaled, k - 1)[k - 1]]
        above = np.flatnonzero(scaled > kth)
        cand = np.concatenate([above, np.flatnonzero(scaled == kth)[: k - above.size]])
    return cand[np.argsort(-scaled[cand], kind="stable")]


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The candidate token ids and their normalized probabilities after temperature, top-k
    and top-p: most likely first (ties: lowest id first) when top-k or top-p filter, else
    every id in order."""
    scaled = np.asarray(logits, np.float32) / np.float32(params.temperature)
    weights = np.exp(scaled - scaled.max())
    size = scaled.size
    k = params.top_k if 0 < params.top_k < size else size
    if k == size and params.top_p >= 1.0:
        return np.arange(size), weights / weights.sum(dtype=np.float64)
    cand = _top(scaled, k) if k < size else _descending(scaled)
    if params.top_p < 1.0:
        probs = weights[cand] / weights[cand].sum(dtype=np.float64)
        keep = max(1, int(np.count_nonzero(np.cumsum(probs) - probs < params.top_p)))
        cand = cand[:keep]
    return cand, weights[cand] / weights[cand].sum(dtype=np.float64)


def _descending(values: np.ndarray) -> np.ndarray:
    """All ids, largest value first, ties by lowest id: one sort of unique uint64 keys
    (value bits made order-preserving, then the id), several times faster than a stable
    argsort of the values."""
    bits = (-values.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
    keys = (ordered.astype(np.uint64) << np.uint64(32)) | np.arange(values.size, dtype=np.uint64)
    return (np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.int64)


class Sampler:
    """One request's token chooser: its parameters, its generator and the tokens it has seen
    (the prompt and every token it chose), for the repetition penalty."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt: list[int] | None = None):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._seen: np.ndarray | None = None
        if params.repetition_penalty != 1.0:
            self._seen = np.zeros(vocab_size, dtype=bool)
            if prompt:
                self._seen[np.asarray(prompt, dtype=np.int64)] = True

    def __call__(self, logits: np.ndarray) -> int:
        """The next token for `logits` [vocab]; remembers it as seen."""
        logits = np.asarray(logits)
        if self._seen is not None:
            logits = apply_repetition_penalty(logits, np.flatnonzero(self._seen),
                                              self.params.repetition_penalty)
        if self.params.greedy:
            token = int(np.argmax(logits))
        else:
            cand, probs = filtered_probs(logits, self.params)
            cdf = np.cumsum(probs)
            at = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
            token = int(cand[min(at, cand.size - 1)])
        if self._seen is not None:
            self._seen[token] = True
        return token
