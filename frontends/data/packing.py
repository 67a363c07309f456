"""Rows of SFT examples as padded batches, optionally several examples packed into one row.

A batch is a dict of int64 arrays, all [batch, length]:
- `input_ids`, `labels` (already shifted: logits[b, i] is scored against labels[b, i];
  -100 = no loss; padding is -100),
- `position_ids`: 0, 1, 2, ... restarting at every example of a packed row (RoPE reads them),
- `segment_ids`: 1, 2, 3, ... numbering the examples of a row, 0 on padding.

What the trainer must do with a packed batch: attend causally *within* a segment only,
i.e. query i may see key j iff j <= i and segment_ids[i] == segment_ids[j] != 0
(`block_causal_mask` builds that boolean mask; `cu_seqlens` gives the varlen-attention
offsets and `startend_row_indices` PaddleNLP's flashmask column bounds for the same
pattern), and feed `position_ids` to the rotary embedding. ALiBi depends on i - j only, so
with the mask applied it needs nothing more. A batch without packing has one segment per row
and the same rules hold (the mask then only hides right padding).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .jsonl import DataError
from .sft import IGNORE_INDEX, SFTExample

OPEN_ROWS = 64  # first-fit looks back this far: packing stays linear in the data size


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most `max_length` tokens, first-fit in data
    order over the last OPEN_ROWS rows; every index appears exactly once."""
    rows: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    for index, n in enumerate(lengths):
        if n > max_length:
            raise DataError(f"example {index} has {n} tokens, more than the packed row "
                            f"length {max_length}")
        for r in range(first_open, len(rows)):
            if room[r] >= n:
                rows[r].append(index)
                room[r] -= n
                break
        else:
            rows.append([index])
            room.append(max_length - n)
            first_open = max(first_open, len(rows) - OPEN_ROWS)
    return rows


def collate(rows: Sequence[Sequence[SFTExample]], pad_id: int, length: int | None = None
            ) -> dict[str, np.ndarray]:
    """Pad rows (each a list of examples laid end to end) into one batch; `length` defaults
    to the longest row."""
    sizes = [sum(len(e) for e in row) for row in rows]
    if not rows or not all(sizes):
        raise DataError("cannot collate an empty row")
    width = max(sizes) if length is None else length
    if width < max(sizes):
        raise DataError(f"a row of {max(sizes)} tokens does not fit in length {width}")
    batch = {"input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
             "labels": np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64),
             "position_ids": np.zeros((len(rows), width), dtype=np.int64),
             "segment_ids": np.zeros((len(rows), width), dtype=np.int64)}
    for b, row in enumerate(rows):
        at = 0
        for segment, example in enumerate(row, start=1):
            span = slice(at, at + len(example))
            batch["input_ids"][b, span] = example.input_ids
            batch["labels"][b, span] = example.labels
            batch["position_ids"][b, span] = np.arange(len(example))
            batch["segment_ids"][b, span] = segment
            at += len(example)
    return batch


def windows_to_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    """Pretraining windows [B, T + 1] as the same batch dict SFT uses, so a trainer has one
    loss path: inputs w[:, :-1], labels w[:, 1:], one segment per row."""
    w = np.asarray(windows, dtype=np.int64)
    if w.ndim != 2 or w.shape[1] < 2:
        raise DataError(f"windows must be [batch, seq_len + 1] with seq_len >= 1, not {w.shape}")
    b, t = w.shape[0], w.shape[1] - 1
    return {"input_ids": w[:, :-1], "labels": w[:, 1:],
            "position_ids": np.broadcast_to(np.arange(t, dtype=np.int64), (b, t)).copy(),
            "segment_ids": np.ones((b, t), dtype=np.int64)}


def default_pad_id(tokenizer) -> int:
    """The id to pad inputs with: the tokenizer's pad token, else EOS, else 0 (padding is
    masked and carries no loss, so any valid id works)."""
    for i in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(i, int):
            return i
    return 0


def block_causal_mask(segment_ids: np.ndarray) -> np.ndarray:
    """Boolean [..., T, T] mask: True where query i may attend to key j (causal, same
    non-padding segment)."""
    seg = np.asarray(segment_ids)
    t = seg.shape[-1]
    causal = np.tril(np.ones((t, t), dtype=bool))
    same = seg[..., :, None] == seg[..., None, :]
    return causal & same & (seg[..., None, :] != 0)


def cu_seqlens(segment_ids: np.ndarray) -> np.ndarray:
    """Cumulative segment lengths over the flattened batch (padding runs count as their own
    segments), the int32 offsets a varlen flash-attention kernel takes."""
    seg = np.asarray(segment_ids)
    flat, width = seg.reshape(-1), seg.shape[-1]
    at = np.arange(1, flat.size)
    starts = np.flatnonzero((flat[1:] != flat[:-1]) | (at % width == 0)) + 1
    return np.concatenate([[0], starts, [flat.size]]).astype(np.int32)


def startend_row_indices(segment_ids: np.ndarray) -> np.ndarray:
    """For each key column j, the first query row that may no longer see it (the end of j's
    segment): PaddleNLP's `attn_mask_startend_row_indices` for a causal block mask, [B, T]."""
    seg = np.asarray(segment_ids)
    out = np.empty_like(seg)
    width = seg.shape[-1]
    for b in np.ndindex(seg.shape[:-1]):
        row = seg[b]
        end = width
        for j in range(width - 1, -1, -1):
            if j + 1 < width and row[j + 1] != row[j]:
                end = j + 1
            out[b + (j,)] = end
    return out
