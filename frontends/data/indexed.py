"""PaddleNLP's tokenized pretraining corpora, read memory-mapped and checked.

Two generations (paddlenlp/data/indexed_dataset.py):
- `PREFIX.bin` + `PREFIX.idx` (MMapIndexedDataset, from Megatron). The .bin is the token
  ids back to back; the .idx, little-endian:
      9 bytes   magic b"MMIDIDX\\x00\\x00"
      u64       version (1)
      u8        dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                7 float32, 8 uint16, 9 uint32, 10 uint64)
      u64       number of sequences N
      u64       length of the document index D
      i32[N]    sizes (tokens per sequence)
      i64[N]    pointers (byte offset of each sequence in the .bin)
      i64[D]    doc_idx (sequence index where each document starts; last entry = N)
- `PREFIX_ids.npy` (every token, 1-D) + `PREFIX_idx.npz` (`lens`: tokens per sequence,
  `docs`: the document index), PaddleNLP's CompatibleIndexedDataset.
Sequences in file order form one token stream (`TokenCorpus.tokens`), which the window
sampler cuts into fixed-length windows.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .jsonl import DataError

MAGIC = b"MMIDIDX\x00\x00"
LAZY_MAGIC = b"TNTIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16, 9: np.uint32, 10: np.uint64}


def dtype_code(dtype) -> int:
    """The .idx code of a numpy dtype."""
    for code, dt in DTYPES.items():
        if np.dtype(dt) == np.dtype(dtype):
            return code
    raise DataError(f"dtype {np.dtype(dtype)} has no PaddleNLP index code")


class TokenCorpus:
    """Sequences of token ids (one per document or sentence) and the stream they form."""

    def __init__(self, name: str, data: np.ndarray, sizes: np.ndarray, offsets: np.ndarray,
                 doc_idx: np.ndarray):
        self.name, self.data = name, data
        self.sizes = sizes.astype(np.int64)
        self.offsets = offsets.astype(np.int64)  # element offset of each sequence in `data`
        self.doc_idx = doc_idx.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])  # offsets in the stream
        self.contiguous = bool(np.array_equal(self.offsets, self.starts[:-1]))
        self.stats = None  # DataStats of a text corpus tokenized on the fly

    @property
    def num_tokens(self) -> int:
        """Tokens in the whole stream."""
        return int(self.starts[-1])

    @property
    def num_documents(self) -> int:
        """Documents (groups of sequences) per the document index."""
        return max(len(self.doc_idx) - 1, 0)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: sequence {i} out of range ({len(self)})")
        i %= len(self)
        return self.data[self.offsets[i]:self.offsets[i] + self.sizes[i]]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Stream tokens [start, stop), across sequence boundaries."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"{self.name}: tokens [{start}, {stop}) outside the stream of "
                             f"{self.num_tokens}")
        if self.contiguous:
            return self.data[start:stop]
        parts, at = [], start
        seq = int(np.searchsorted(self.starts, start, side="right")) - 1
        while at < stop:
            inside = at - self.starts[seq]
            take = min(stop - at, self.sizes[seq] - inside)
            parts.append(self.data[self.offsets[seq] + inside:self.offsets[seq] + inside + take])
            at, seq = at + take, seq + 1
        return np.concatenate(parts) if parts else self.data[:0]

    def check_vocab(self, vocab_size: int, chunk: int = 1 << 24) -> None:
        """Raise DataError if any token id is negative or not below `vocab_size`."""
        for at in range(0, self.num_tokens, chunk):
            part = self.tokens(at, min(at + chunk, self.num_tokens))
            lo, hi = int(part.min()), int(part.max())
            if lo < 0 or hi >= vocab_size:
                bad = hi if hi >= vocab_size else lo
                raise DataError(f"{self.name}: token id {bad} is outside the model's "
                                f"vocabulary of {vocab_size}")


def strip_prefix(path: str | Path) -> str:
    """A corpus prefix from a prefix or from one of its files' names."""
    s = str(path)
    for suffix in (".bin", ".idx", "_ids.npy", "_idx.npz"):
        if s.endswith(suffix):
            return s[:-len(suffix)]
    return s


def read_index(idx_path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray]:
    """(dtype, sizes, pointers, doc_idx) of a `.idx` file, with every field checked against
    the file's length."""
    raw = np.memmap(idx_path, mode="r", dtype=np.uint8) if idx_path.stat().st_size else b""
    if len(raw) < HEADER.size:
        raise DataError(f"{idx_path}: truncated index: {len(raw)} bytes, the header alone "
                        f"is {HEADER.size}")
    magic, version, code, n, docs = HEADER.unpack(bytes(raw[:HEADER.size]))
    if magic != MAGIC:
        hint = (" (the older 'lazy' IndexedDataset format, not supported: re-run PaddleNLP's "
                "preprocessing with --data_impl mmap)" if magic[:8] == LAZY_MAGIC else "")
        raise DataError(f"{idx_path}: not a PaddleNLP mmap index: magic {magic!r}, expected "
                        f"{MAGIC!r}{hint}")
    if version != VERSION:
        raise DataError(f"{idx_path}: index version {version}, only {VERSION} is known")
    if code not in DTYPES:
        raise DataError(f"{idx_path}: unknown dtype code {code} (known: {sorted(DTYPES)})")
    need = HEADER.size + 12 * n + 8 * docs
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "corrupt"
        raise DataError(f"{idx_path}: {what} index: {len(raw)} bytes, but {n} sequences and "
                        f"{docs} document entries need {need}")
    at = HEADER.size
    sizes = np.frombuffer(raw, dtype="<i4", count=n, offset=at)
    pointers = np.frombuffer(raw, dtype="<i8", count=n, offset=at + 4 * n)
    doc_idx = np.frombuffer(raw, dtype="<i8", count=docs, offset=at + 12 * n)
    return np.dtype(DTYPES[code]), sizes, pointers, doc_idx


def check_doc_idx(name: str, doc_idx: np.ndarray, n: int) -> None:
    """The document index must run from 0 to `n` sequences without going back."""
    if len(doc_idx) < 1 or doc_idx[0] != 0 or doc_idx[-1] != n or (np.diff(doc_idx) < 0).any():
        raise DataError(f"{name}: corrupt document index: it must rise from 0 to the number "
                        f"of sequences ({n})")


def open_mmap(prefix: str | Path) -> TokenCorpus:
    """The corpus `PREFIX.bin` + `PREFIX.idx`, memory-mapped; DataError on a missing,
    corrupt or truncated file (naming it) and on an empty corpus."""
    prefix = strip_prefix(prefix)
    idx_path, bin_path = Path(prefix + ".idx"), Path(prefix + ".bin")
    for p in (idx_path, bin_path):
        if not p.is_file():
            raise DataError(f"{p}: no such file (a PaddleNLP mmap corpus is PREFIX.bin + "
                            "PREFIX.idx)")
    dtype, sizes, pointers, doc_idx = read_index(idx_path)
    if (sizes < 0).any():
        raise DataError(f"{idx_path}: corrupt index: negative sequence size "
                        f"{int(sizes.min())}")
    if (pointers % dtype.itemsize != 0).any() or (pointers < 0).any():
        raise DataError(f"{idx_path}: corrupt index: a pointer is negative or not a multiple "
                        f"of the {dtype} item size {dtype.itemsize}")
    check_doc_idx(str(idx_path), doc_idx, len(sizes))
    length = bin_path.stat().st_size
    ends = pointers + sizes.astype(np.int64) * dtype.itemsize
    if len(ends) and int(ends.max()) > length:
        i = int(np.argmax(ends))
        raise DataError(f"{bin_path}: truncated data: sequence {i} ends at byte "
                        f"{int(ends[i])} but the file has {length} bytes")
    if not len(sizes) or not int(sizes.sum()):
        raise DataError(f"{prefix}: empty corpus: no tokens")
    data = np.memmap(bin_path, mode="r", dtype=dtype, shape=(length // dtype.itemsize,))
    return TokenCorpus(prefix, data, sizes, pointers // dtype.itemsize, doc_idx)


def open_legacy(prefix: str | Path) -> TokenCorpus:
    """The older corpus `PREFIX_ids.npy` (memory-mapped) + `PREFIX_idx.npz`."""
    prefix = strip_prefix(prefix)
    ids_path, idx_path = Path(prefix + "_ids.npy"), Path(prefix + "_idx.npz")
    for p in (ids_path, idx_path):
        if not p.is_file():
            raise DataError(f"{p}: no such file (PaddleNLP's older corpus is PREFIX_ids.npy "
                            "+ PREFIX_idx.npz)")
    try:
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        with np.load(idx_path, allow_pickle=False) as z:
            missing = {"lens", "docs"} - set(z.files)
            if missing:
                raise DataError(f"{idx_path}: missing array(s) {', '.join(sorted(missing))} "
                                f"(has {', '.join(z.files) or 'none'})")
            lens, docs = np.asarray(z["lens"]), np.asarray(z["docs"])
    except (OSError, ValueError, EOFError) as e:
        bad = ids_path if "ids" not in locals() else idx_path
        raise DataError(f"{bad}: cannot read: {e}") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(f"{ids_path}: expected a 1-D integer array, got {ids.dtype} "
                        f"{ids.shape}")
    if lens.ndim != 1 or lens.dtype.kind not in "iu" or (lens < 0).any():
        raise DataError(f"{idx_path}: 'lens' must be non-negative integers")
    if int(lens.sum()) > len(ids):
        raise DataError(f"{ids_path}: truncated data: 'lens' add up to {int(lens.sum())} "
                        f"tokens but the file holds {len(ids)}")
    check_doc_idx(str(idx_path), docs, len(lens))
    if not len(lens) or not int(lens.sum()):
        raise DataError(f"{prefix}: empty corpus: no tokens")
    starts = np.concatenate([[0], np.cumsum(lens.astype(np.int64))])[:-1]
    return TokenCorpus(prefix, ids, lens, starts, docs)
