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


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The candidate token ids (most likely first) and their normalized probabilities
    after temperature, top-k and top-p."""
    scaled = logits.astype(np.float64) / params.temperature
    k = params.top_k if 0 < params.top_k < scaled.size else scaled.size
    if k < scaled.size:
        part = np.argpartition(-scaled, k - 1)[:k]
        # ties at the k-th value: keep the lowest ids, as a stable full sort would
        kth = scaled[part].min()
        above = np.flatnonzero(scaled > kth)
        ties = np.flatnonzero(scaled == kth)[: k - above.size]
        cand = np.concatenate([above, ties])
    else:
        cand = np.arange(scaled.size)
    cand = cand[np.argsort(-scaled[cand], kind="stable")]
    probs = np.exp(scaled[cand] - scaled[cand[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:
        before = np.cumsum(probs) - probs
        keep = max(1, int(np.count_nonzero(before < params.top_p)))
        cand, probs = cand[:keep], probs[:keep] / probs[:keep].sum()
    return cand, probs


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
