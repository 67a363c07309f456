"""Reproducible, resumable batch samplers.

Both samplers walk a per-epoch permutation of their items fixed by (seed, epoch), batch
after batch, running into the next epoch rather than yielding a short batch. Their position
is a small JSON-ready dict (`state_dict()`); `load_state_dict()` on a fresh sampler over the
same data continues exactly where the saved one stopped, and refuses a state saved for
other data or another shape.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .jsonl import DataError
from .packing import collate, pack_rows
from .sft import SFTDataset


class EpochOrder:
    """Indices 0..n-1 in a seeded per-epoch order, handed out `batch_size` at a time."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        if n < 1:
            raise DataError("nothing to sample from: the data set is empty")
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, not {batch_size}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_indices(self) -> np.ndarray:
        """The next `batch_size` item indices (crossing into the next epoch if need be)."""
        out = []
        while len(out) < self.batch_size:
            take = min(self.batch_size - len(out), self.n - self.position)
            out.extend(self._order[self.position:self.position + take].tolist())
            self.position += take
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return np.array(out, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """Where the order stands, plus what it was built for (checked on load)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "items": self.n, "batch_size": self.batch_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any], extra: dict[str, Any]) -> None:
        """Continue from `state`; `extra` holds the caller's own fields to compare."""
        mine = {**self.state_dict(), **extra}
        for key in (*extra, "items", "batch_size", "shuffle"):
            if state.get(key) != mine[key]:
                raise DataError(f"data position was saved for {key}={state.get(key)!r} but "
                                f"this run has {key}={mine[key]!r}: not the same data/shape")
        epoch, position = state.get("epoch"), state.get("position")
        if not (isinstance(epoch, int) and isinstance(position, int)
                and epoch >= 0 and 0 <= position < self.n):
            raise DataError(f"data position state is corrupt: epoch={epoch!r} "
                            f"position={position!r}")
        self.seed = state.get("seed", self.seed)
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)


class WindowSampler:
    """Fixed-length pretraining windows from a token corpus: each batch is an int64 array
    [batch, seq_len + 1] (inputs = w[:, :-1], labels = w[:, 1:]). Window k covers stream
    tokens [k*seq_len, k*seq_len + seq_len + 1), so consecutive windows share one token and
    every token but the first is a label once per epoch."""

    def __init__(self, corpus, seq_len: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        if seq_len < 1:
            raise DataError(f"sequence length must be at least 1, not {seq_len}")
        self.corpus, self.seq_len = corpus, seq_len
        windows = (corpus.num_tokens - 1) // seq_len
        if windows < 1:
            raise DataError(f"{corpus.name}: {corpus.num_tokens} tokens, fewer than one "
                            f"window of {seq_len + 1}")
        self.order = EpochOrder(windows, batch_size, seed, shuffle)

    @property
    def windows_per_epoch(self) -> int:
        """How many distinct windows the corpus holds."""
        return self.order.n

    def window(self, k: int) -> np.ndarray:
        """Window `k` of the token stream, [seq_len + 1] int64."""
        start = k * self.seq_len
        return np.asarray(self.corpus.tokens(start, start + self.seq_len + 1), dtype=np.int64)

    def next_batch(self) -> np.ndarray:
        """The next [batch, seq_len + 1] windows."""
        return np.stack([self.window(int(k)) for k in self.order.next_indices()])

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position (JSON-ready)."""
        return {**self.order.state_dict(), "kind": "windows", "seq_len": self.seq_len,
                "tokens": int(self.corpus.num_tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position over the same corpus and shape."""
        self.order.load_state_dict(state, {"kind": "windows", "seq_len": self.seq_len,
                                           "tokens": int(self.corpus.num_tokens)})


class SFTBatcher:
    """Batches of an SFTDataset (see packing.py for the arrays). With `pack`, examples are
    packed once, in file order, into rows of `max_length` tokens, and rows are shuffled."""

    def __init__(self, dataset: SFTDataset, batch_size: int, pad_id: int, seed: int = 0,
                 pack: bool = False, shuffle: bool = True, pad_to: int | None = None):
        self.dataset, self.pad_id, self.pack, self.pad_to = dataset, pad_id, pack, pad_to
        lengths = [len(e) for e in dataset.examples]
        self.rows = (pack_rows(lengths, dataset.max_length) if pack
                     else [[i] for i in range(len(lengths))])
        self.order = EpochOrder(len(self.rows), batch_size, seed, shuffle)

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch dict (input_ids, labels, position_ids, segment_ids)."""
        rows = [[self.dataset.examples[i] for i in self.rows[r]]
                for r in self.order.next_indices()]
        return collate(rows, self.pad_id, self.pad_to)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The batcher's position (JSON-ready)."""
        return {**self.order.state_dict(), "kind": "sft", "pack": self.pack,
                "examples": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position over the same data set."""
        self.order.load_state_dict(state, {"kind": "sft", "pack": self.pack,
                                           "examples": len(self.dataset)})
