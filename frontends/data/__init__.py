"""Training data in the seeds' formats, as numpy arrays (no framework needed).

- SFT: `load_sft(path, tokenizer, max_length)` reads `{"src", "tgt"}` jsonl into shifted
  examples with loss on target tokens only (sft.py); `SFTBatcher` batches them, optionally
  packed (packing.py documents the arrays and what a trainer must do with them).
- Pretraining: `open_corpus(path, tokenizer)` reads PaddleNLP's mmap `.bin/.idx`, its older
  `_ids.npy/_idx.npz`, or raw text / `{"text"}` jsonl tokenized on the fly (pretrain.py,
  indexed.py); `WindowSampler` yields [batch, seq_len + 1] windows.
- `prepare(corpus, prefix, tokenizer)` writes the mmap format (writer.py).
Samplers are reproducible by seed and resumable (`state_dict` / `load_state_dict`). Bad
input raises `DataError` naming the file and line, or is skipped and counted with
`on_error="skip"`.
"""

from .indexed import TokenCorpus, open_legacy, open_mmap, read_index
from .jsonl import DataError, DataStats, read_text_documents
from .packing import (block_causal_mask, collate, cu_seqlens, default_pad_id, pack_rows,
                      startend_row_indices, windows_to_batch)
from .pretrain import corpus_kind, encode_document, open_corpus, tokenize_corpus
from .sampler import EpochOrder, SFTBatcher, WindowSampler
from .sft import IGNORE_INDEX, SFTDataset, SFTExample, encode_sft, load_sft
from .writer import PrepareResult, prepare, token_dtype

__all__ = [
    "DataError", "DataStats", "EpochOrder", "IGNORE_INDEX", "PrepareResult", "SFTBatcher",
    "SFTDataset", "SFTExample", "TokenCorpus", "WindowSampler", "block_causal_mask", "collate",
    "corpus_kind", "cu_seqlens", "default_pad_id", "encode_document", "encode_sft",
    "load_sft", "open_corpus", "open_legacy", "open_mmap", "pack_rows", "prepare",
    "read_index", "read_text_documents", "startend_row_indices", "token_dtype",
    "tokenize_corpus", "windows_to_batch",
]
