"""A small deterministic numpy model implementing the engine's CausalLM contract.

One causal attention layer over a per-row key/value cache, plus a bigram table and a
position term: a logit depends on the token, its position and every earlier token, so
a cache written at the wrong place, a wrong past_len or computing on padding changes
it. `reference_logits` recomputes from the whole sequence without any cache.

The model also checks the contract as it is called (rows ascending and distinct, no
position skipped, no row run after its cache rows were dropped) and records the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ToyCache:
    """Keys/values per row and position, and how many positions each row has written."""

    keys: np.ndarray
    values: np.ndarray
    written: np.ndarray


@dataclass
class ToyLM:
    """Tiny attention model (see the module docstring)."""

    vocab_size: int = 64
    max_positions: int | None = 256
    dim: int = 16
    seed: int = 0
    sharp: float = 4.0
    calls: list[tuple[list[int], tuple[int, ...], list[int]]] = field(default_factory=list)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        n, d, v = self.max_positions or 1024, self.dim, self.vocab_size
        self.embed = rng.standard_normal((v, d))
        self.pos = rng.standard_normal((n, d)) * 0.5
        self.wq, self.wk, self.wv = (rng.standard_normal((d, d)) / np.sqrt(d) for _ in range(3))
        self.out = rng.standard_normal((d, v)) * self.sharp / np.sqrt(d)
        self.bigram = rng.standard_normal((v, v)) * self.sharp
        self.pos_bias = rng.standard_normal((n, v))

    def new_cache(self, batch: int, max_len: int) -> ToyCache:
        """Zeroed keys/values for `batch` rows of `max_len` positions."""
        shape = (batch, max_len, self.dim)
        return ToyCache(np.zeros(shape), np.zeros(shape), np.zeros(batch, np.int64))

    def _hidden(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.embed[tokens] + self.pos[positions]

    def _head(self, h: np.ndarray, ctx: np.ndarray, token: int, position: int) -> np.ndarray:
        return (h + ctx) @ self.out + self.bigram[token] + self.pos_bias[position]

    def forward(self, cache: ToyCache, rows, input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """The contract's forward: last-position logits, keys/values written in place."""
        rows = [int(r) for r in rows]
        assert rows == sorted(set(rows)), f"rows must be ascending and distinct: {rows}"
        assert input_ids.dtype == np.int64 and input_ids.shape[0] == len(rows)
        assert past_lens.shape == (len(rows),)
        self.calls.append((rows, tuple(input_ids.shape), [int(p) for p in past_lens]))
        out = np.zeros((len(rows), self.vocab_size), np.float32)
        for j, (row, past) in enumerate(zip(rows, past_lens)):
            past, seq = int(past), input_ids.shape[1]
            assert past <= cache.written[row], "a position was skipped"
            assert past + seq <= cache.keys.shape[1], "past the cache's max_len"
            pos = np.arange(past, past + seq)
            h = self._hidden(input_ids[j], pos)
            cache.keys[row, pos] = h @ self.wk
            cache.values[row, pos] = h @ self.wv
            cache.written[row] = past + seq
            q = h[-1] @ self.wq
            k, v = cache.keys[row, :past + seq], cache.values[row, :past + seq]
            w = np.exp(k @ q / np.sqrt(self.dim) - (k @ q / np.sqrt(self.dim)).max())
            ctx = (w / w.sum()) @ v
            out[j] = self._head(h[-1], ctx, int(input_ids[j, -1]), past + seq - 1)
        return out

    def reference_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits after `tokens`, computed from the whole sequence with no cache."""
        ids = np.asarray(tokens, np.int64)
        h = self._hidden(ids, np.arange(ids.size))
        k, v, q = h @ self.wk, h @ self.wv, h[-1] @ self.wq
        s = k @ q / np.sqrt(self.dim)
        w = np.exp(s - s.max())
        return self._head(h[-1], (w / w.sum()) @ v, int(ids[-1]), ids.size - 1).astype(np.float32)


class RecordingLM(ToyLM):
    """A ToyLM that keeps every logits row it returns, per cache row."""

    def __post_init__(self):
        super().__post_init__()
        self.returned: dict[int, list[np.ndarray]] = {}

    def forward(self, cache, rows, input_ids, past_lens):
        """ToyLM.forward, remembering the logits by row."""
        out = super().forward(cache, rows, input_ids, past_lens)
        for r, logits in zip(rows, out):
            self.returned.setdefault(int(r), []).append(logits.copy())
        return out
