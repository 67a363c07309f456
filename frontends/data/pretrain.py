"""Pretraining corpora of any supported kind, as one TokenCorpus.

`open_corpus(path, tokenizer)` accepts
- a PaddleNLP mmap prefix (`PREFIX.bin` + `PREFIX.idx`, or either file's name),
- PaddleNLP's older `PREFIX_ids.npy` + `PREFIX_idx.npz`,
- raw text (documents separated by blank lines) or `{"text": ...}` jsonl, tokenized on the
  fly with the model's tokenizer, each document encoded without special tokens and closed
  by EOS (PaddleNLP's `--append_eos`), so documents stay apart in the token stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .indexed import TokenCorpus, open_legacy, open_mmap, strip_prefix
from .jsonl import DataError, DataStats, check_on_error, iter_text_documents

TEXT_SUFFIXES = (".jsonl", ".json", ".txt", ".text", ".md")


def encode_document(tokenizer, text: str, append_eos: bool = True,
                    add_bos: bool = False) -> list[int]:
    """Token ids of one pretraining document."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if add_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise DataError(f"{getattr(tokenizer, 'model_dir', 'tokenizer')}: add_bos "
                            "requested but the tokenizer has no BOS token")
        ids = [bos] + ids
    if append_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError(f"{getattr(tokenizer, 'model_dir', 'tokenizer')}: no EOS token "
                            "id to close documents with (pass append_eos=False)")
        ids = ids + [eos]
    return ids


def iter_encoded(path: str | Path, tokenizer, stats: DataStats, on_error: str = "fail",
                 append_eos: bool = True, add_bos: bool = False, key: str = "text"
                 ) -> Iterator[list[int]]:
    """Token ids of every non-empty document of a text/jsonl corpus, counted in `stats`."""
    check_on_error(on_error)
    for _, text in iter_text_documents(path, stats, on_error, key):
        if not text.strip():
            stats.dropped_examples += 1
            continue
        ids = encode_document(tokenizer, text, append_eos, add_bos)
        if not ids:
            stats.dropped_examples += 1
            continue
        stats.examples += 1
        stats.tokens += len(ids)
        yield ids


def tokenize_corpus(path: str | Path, tokenizer, on_error: str = "fail",
                    append_eos: bool = True, add_bos: bool = False, key: str = "text"
                    ) -> tuple[TokenCorpus, DataStats]:
    """A text or jsonl corpus tokenized in memory, one sequence and document per text."""
    stats = DataStats()
    docs = [np.asarray(ids, dtype=np.int64)
            for ids in iter_encoded(path, tokenizer, stats, on_error, append_eos, add_bos, key)]
    if not docs:
        raise DataError(f"{path}: empty corpus: no text documents ({stats.skipped_lines} bad "
                        "lines skipped)")
    sizes = np.array([len(d) for d in docs], dtype=np.int64)
    data = np.concatenate(docs)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return TokenCorpus(str(path), data, sizes, starts[:-1], np.arange(len(docs) + 1)), stats


def corpus_kind(path: str | Path) -> str:
    """'mmap', 'legacy' or 'text': what `open_corpus` will read at `path`."""
    prefix = strip_prefix(path)
    if Path(prefix + ".idx").is_file() or Path(prefix + ".bin").is_file():
        return "mmap"
    if Path(prefix + "_ids.npy").is_file() or Path(prefix + "_idx.npz").is_file():
        return "legacy"
    if Path(path).is_file():
        return "text"
    raise DataError(f"{path}: no corpus there (looked for PREFIX.bin/.idx, "
                    "PREFIX_ids.npy/_idx.npz, or a text/jsonl file)")


def open_corpus(path: str | Path, tokenizer=None, on_error: str = "fail",
                vocab_size: int | None = None) -> TokenCorpus:
    """Any supported pretraining corpus as a TokenCorpus (see the module docstring); with
    `vocab_size`, every token id is checked to be below it."""
    kind = corpus_kind(path)
    if kind == "mmap":
        corpus = open_mmap(path)
    elif kind == "legacy":
        corpus = open_legacy(path)
    else:
        if tokenizer is None:
            raise DataError(f"{path}: a text corpus needs the model's tokenizer")
        corpus, stats = tokenize_corpus(path, tokenizer, on_error)
        corpus.stats = stats
    if vocab_size is not None:
        corpus.check_vocab(vocab_size)
    return corpus
