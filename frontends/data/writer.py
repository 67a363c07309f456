"""`prepare`: tokenize a text/jsonl corpus into PaddleNLP's mmap format (PREFIX.bin/.idx).

The layout is the one documented in indexed.py, as PaddleNLP's MMapIndexedDatasetBuilder
writes it: one sequence and one document per input text, token dtype uint16 when the
vocabulary is under 65500 ids and int32 otherwise (PaddleNLP's rule). Both files are
written under temporary names and renamed into place only when complete, so an interrupted
run never leaves a half-written corpus under the final names.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .indexed import MAGIC, VERSION, dtype_code, strip_prefix
from .jsonl import DataError, DataStats
from .pretrain import iter_encoded

UINT16_VOCAB_LIMIT = 65500


@dataclass
class PrepareResult:
    """What `prepare` wrote."""

    bin_path: Path
    idx_path: Path
    dtype: np.dtype
    documents: int
    tokens: int
    stats: DataStats


def token_dtype(vocab_size: int | None) -> np.dtype:
    """The smallest dtype PaddleNLP uses for a vocabulary of `vocab_size` ids."""
    if vocab_size is not None and vocab_size < UINT16_VOCAB_LIMIT:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def write_index(path: Path, dtype: np.dtype, sizes: np.ndarray, doc_idx: np.ndarray) -> None:
    """Write a `.idx` for sequences of `sizes` tokens stored back to back."""
    sizes = np.asarray(sizes, dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(sizes.astype(np.int64))[:-1]]) * dtype.itemsize
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<QB", VERSION, dtype_code(dtype)))
        f.write(struct.pack("<QQ", len(sizes), len(doc_idx)))
        f.write(sizes.tobytes())
        f.write(np.asarray(pointers[:len(sizes)], dtype="<i8").tobytes())
        f.write(np.asarray(doc_idx, dtype="<i8").tobytes())


def prepare(corpus: str | Path, prefix: str | Path, tokenizer, *, on_error: str = "fail",
            append_eos: bool = True, add_bos: bool = False, key: str = "text",
            dtype=None) -> PrepareResult:
    """Tokenize `corpus` (`{"text": ...}` jsonl, or raw text with blank-line separated
    documents) and write `PREFIX.bin` + `PREFIX.idx`. Bad jsonl lines raise or are skipped
    per `on_error`; a corpus without any text raises DataError and writes nothing."""
    prefix = strip_prefix(prefix)
    bin_path, idx_path = Path(prefix + ".bin"), Path(prefix + ".idx")
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    dt = np.dtype(dtype) if dtype is not None else token_dtype(getattr(tokenizer, "vocab_size",
                                                                        None))
    limit = np.iinfo(dt).max
    stats, sizes = DataStats(), []
    tmp_bin, tmp_idx = Path(f"{bin_path}.tmp{os.getpid()}"), Path(f"{idx_path}.tmp{os.getpid()}")
    try:
        with open(tmp_bin, "wb") as out:
            for ids in iter_encoded(corpus, tokenizer, stats, on_error, append_eos, add_bos, key):
                if max(ids) > limit or min(ids) < 0:
                    raise DataError(f"{corpus}: token id {max(ids)} does not fit in {dt}")
                out.write(np.asarray(ids, dtype=dt).tobytes())
                sizes.append(len(ids))
        if not sizes:
            raise DataError(f"{corpus}: empty corpus: no text documents "
                            f"({stats.skipped_lines} bad lines skipped); nothing written")
        write_index(tmp_idx, dt, np.array(sizes), np.arange(len(sizes) + 1))
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_idx, idx_path)
    finally:
        for tmp in (tmp_bin, tmp_idx):
            tmp.unlink(missing_ok=True)
    return PrepareResult(bin_path, idx_path, dt, len(sizes), int(sum(sizes)), stats)
