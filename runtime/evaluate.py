"""Evaluation on token ids: negative log-likelihood over strided windows, and the
choice among candidate next tokens. A model is any `logits(ids [1, n]) -> [1, n, vocab]`.

Strided windows (for texts longer than the model's context): the first window holds
tokens [0, window) and scores all but the first; each next one moves on by `stride`
tokens (at most window - 1: a scored token needs one token of context), scores just
those, and fills the rest of its `window` tokens with the context before them. So
every token after the first is scored exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from llmc.compiler.errors import LlmcError

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class NllSum:
    """Summed negative log-likelihood (nats) over `tokens` scored tokens, in `windows` runs."""

    nll: float = 0.0
    tokens: int = 0
    windows: int = 0

    def add(self, other: "NllSum") -> None:
        self.nll += other.nll
        self.tokens += other.tokens
        self.windows += other.windows

    @property
    def loss(self) -> float:
        """Mean NLL per scored token."""
        if self.tokens == 0:
            raise LlmcError("evaluation scored no tokens (every text is shorter than 2 tokens)")
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.loss))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over n tokens."""
    if window < 2 or not 1 <= stride <= window:
        raise LlmcError(f"perplexity: need window >= 2 and 1 <= stride <= window, got "
                        f"window={window}, stride={stride}")
    step = min(stride, window - 1)  # a scored token needs one token of context
    out, scored = [], 1
    while scored < n:
        end = min(n, scored + step if out else window)
        out.append((max(0, end - window), end, scored))
        scored = end
    return out


def sequence_nll(logits_fn: LogitsFn, ids: Sequence[int], window: int, stride: int) -> NllSum:
    """NLL of every token of `ids` after the first, given what precedes it in its window."""
    seq = np.asarray(ids, dtype=np.int64)
    total = NllSum()
    for begin, end, first in windows(len(seq), window, stride):
        logits = np.asarray(logits_fn(seq[None, begin:end]))[0]
        # logits at position t - 1 predict the token at position t
        logp = log_softmax(logits[first - begin - 1:end - begin - 1])
        targets = seq[first:end]
        total.add(NllSum(float(-logp[np.arange(len(targets)), targets].sum()), len(targets), 1))
    return total


def pick_choice(logits_fn: LogitsFn, prompt: Sequence[int], choice_ids: Sequence[int]) -> int:
    """Index of the candidate token the model rates highest after `prompt`."""
    last = np.asarray(logits_fn(np.asarray(prompt, dtype=np.int64)[None]))[0, -1]
    return int(np.argmax(last[list(choice_ids)]))
