"""PaddleNLP's tokenized corpora: `prepare` writes the documented mmap layout (checked by a
parser written here from paddlenlp/data/indexed_dataset.py's layout, not by our reader),
both generations read back memory-mapped, and corrupt files fail naming the file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from llmc.frontends import fixtures as F
from llmc.frontends.data import (DataError, corpus_kind, open_corpus, open_legacy, open_mmap,
                                 prepare, token_dtype)
from llmc.frontends.tokenizer import load_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world, the compiler.",
         "大模型编译器把计算图编译成高效的内核。", "A third document, numbers 0 1 2 3."]
PADDLE_DTYPES = {1: "u1", 2: "i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f8", 7: "<f4",
                 8: "<u2", 9: "<u4", 10: "<u8"}


def parse_paddle_mmap(prefix):
    """An independent reader of MMapIndexedDataset: magic(9) version<Q dtype<B len<Q
    doc_count<Q, sizes int32[len], pointers int64[len] (bytes), doc_idx int64[doc_count]."""
    raw = open(f"{prefix}.idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack_from("<Q", raw, 9)
    (code,) = struct.unpack_from("<B", raw, 17)
    n, docs = struct.unpack_from("<QQ", raw, 18)
    sizes = np.frombuffer(raw, "<i4", n, 34)
    pointers = np.frombuffer(raw, "<i8", n, 34 + 4 * n)
    doc_idx = np.frombuffer(raw, "<i8", docs, 34 + 12 * n)
    assert len(raw) == 34 + 12 * n + 8 * docs
    data = open(f"{prefix}.bin", "rb").read()
    dt = np.dtype(PADDLE_DTYPES[code])
    seqs = [np.frombuffer(data, dt, int(s), int(p)).tolist() for s, p in zip(sizes, pointers)]
    return version, dt, seqs, doc_idx.tolist()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    F.write_tokenizer_json(d, 256)
    return load_tokenizer(d)


@pytest.fixture
def corpus_jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS),
                    encoding="utf-8")
    return path


def expected_docs(tok):
    return [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in TEXTS]


def test_prepare_writes_paddlenlp_layout(tmp_path, tok, corpus_jsonl):
    result = prepare(corpus_jsonl, tmp_path / "out" / "corpus", tok)
    assert result.bin_path.name == "corpus.bin" and result.idx_path.name == "corpus.idx"
    version, dt, seqs, doc_idx = parse_paddle_mmap(tmp_path / "out" / "corpus")
    assert version == 1 and dt == np.uint16 == result.dtype
    assert seqs == expected_docs(tok)
    assert doc_idx == list(range(len(TEXTS) + 1))
    assert result.documents == len(TEXTS) and result.tokens == sum(map(len, seqs))
    assert not [p for p in (tmp_path / "out").iterdir() if "tmp" in p.name]


def test_prepare_round_trip_through_reader(tmp_path, tok, corpus_jsonl):
    prepare(corpus_jsonl, tmp_path / "c", tok)
    corpus = open_mmap(tmp_path / "c")
    assert isinstance(corpus.data, np.memmap)
    assert [corpus[i].tolist() for i in range(len(corpus))] == expected_docs(tok)
    stream = [t for d in expected_docs(tok) for t in d]
    assert corpus.num_tokens == len(stream) and corpus.num_documents == len(TEXTS)
    assert corpus.tokens(3, 20).tolist() == stream[3:20]
    assert open_corpus(str(tmp_path / "c") + ".bin").num_tokens == len(stream)
    assert corpus_kind(tmp_path / "c.idx") == "mmap"


def test_prepare_int32_for_large_vocab_and_raw_text(tmp_path, tok):
    raw = tmp_path / "corpus.txt"
    raw.write_text("\n\n".join(TEXTS[:2]) + "\n\n\n" + TEXTS[2] + "\nsecond line\n",
                   encoding="utf-8")
    assert token_dtype(65499) == np.uint16 and token_dtype(65500) == np.int32
    prepare(raw, tmp_path / "big", tok, dtype=np.int32)
    _, dt, seqs, _ = parse_paddle_mmap(tmp_path / "big")
    assert dt == np.int32 and len(seqs) == 3
    assert seqs[2] == tok.encode(TEXTS[2] + "\nsecond line", add_special_tokens=False) + [2]


def test_prepare_bad_lines(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "Hello world"}\n{"text": 5}\nnope\n{"txt": "x"}\n', "utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'text' must be a string, got int"):
        prepare(path, tmp_path / "p", tok)
    assert not (tmp_path / "p.bin").exists() and not (tmp_path / "p.idx").exists()
    result = prepare(path, tmp_path / "p", tok, on_error="skip")
    assert result.documents == 1 and result.stats.skipped_lines == 3
    assert [e.split(":")[1] for e in result.stats.errors] == ["2", "3", "4"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "   "}\n\n', "utf-8")
    with pytest.raises(DataError, match="empty corpus"):
        prepare(empty, tmp_path / "e", tok)
    assert not (tmp_path / "e.bin").exists()


def test_legacy_npy_npz(tmp_path, tok):
    docs = expected_docs(tok)
    ids = np.array([t for d in docs for t in d], dtype=np.int32)
    np.save(tmp_path / "old_ids.npy", ids)
    np.savez(tmp_path / "old_idx.npz", lens=np.array([len(d) for d in docs]),
             docs=np.arange(len(docs) + 1))
    corpus = open_corpus(tmp_path / "old")
    assert corpus_kind(tmp_path / "old") == "legacy"
    assert isinstance(corpus.data, np.memmap)
    assert [corpus[i].tolist() for i in range(len(corpus))] == docs
    assert corpus.tokens(0, corpus.num_tokens).tolist() == ids.tolist()
    np.savez(tmp_path / "old_idx.npz", lens=np.array([len(d) + 5 for d in docs]),
             docs=np.arange(len(docs) + 1))
    with pytest.raises(DataError, match=r"old_ids.npy: truncated data"):
        open_legacy(tmp_path / "old")
    np.savez(tmp_path / "old_idx.npz", lens=np.array([3]))
    with pytest.raises(DataError, match=r"old_idx.npz: missing array\(s\) docs"):
        open_legacy(tmp_path / "old")
    (tmp_path / "old_idx.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"old_idx.npz: cannot read"):
        open_legacy(tmp_path / "old")


def test_text_corpus_on_the_fly(corpus_jsonl, tok):
    corpus = open_corpus(corpus_jsonl, tok)
    assert corpus_kind(corpus_jsonl) == "text"
    assert [corpus[i].tolist() for i in range(len(corpus))] == expected_docs(tok)
    with pytest.raises(DataError, match="needs the model's tokenizer"):
        open_corpus(corpus_jsonl)
    with pytest.raises(DataError, match="outside the model's vocabulary of 100"):
        open_corpus(corpus_jsonl, tok, vocab_size=100)


@pytest.fixture
def good_prefix(tmp_path, tok, corpus_jsonl):
    prepare(corpus_jsonl, tmp_path / "g", tok)
    return tmp_path / "g"


def _patch(path, at, data):
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, message", [
    (lambda idx, b: _patch(idx, 0, b"XXIDIDX\x00\x00"), r"g.idx: not a PaddleNLP mmap index"),
    (lambda idx, b: _patch(idx, 0, b"TNTIDX\x00\x00\x00"), r"'lazy' IndexedDataset"),
    (lambda idx, b: _patch(idx, 9, struct.pack("<Q", 2)), r"g.idx: index version 2"),
    (lambda idx, b: _patch(idx, 17, b"\x0b"), r"g.idx: unknown dtype code 11"),
    (lambda idx, b: idx.write_bytes(idx.read_bytes()[:-3]), r"g.idx: truncated index"),
    (lambda idx, b: idx.write_bytes(idx.read_bytes()[:20]), r"g.idx: truncated index: 20 bytes"),
    (lambda idx, b: idx.write_bytes(b""), r"g.idx: truncated index: 0 bytes"),
    (lambda idx, b: idx.write_bytes(idx.read_bytes() + b"\0" * 8), r"g.idx: corrupt index"),
    (lambda idx, b: b.write_bytes(b.read_bytes()[:-4]), r"g.bin: truncated data: sequence 3"),
    (lambda idx, b: _patch(idx, 34, struct.pack("<i", 10**6)), r"g.bin: truncated data"),
    (lambda idx, b: _patch(idx, 34, struct.pack("<i", -1)), r"negative sequence size"),
    (lambda idx, b: _patch(idx, 34 + 16, struct.pack("<q", 1)), r"not a multiple"),
    (lambda idx, b: _patch(idx, len(idx.read_bytes()) - 8, struct.pack("<q", 9)),
     r"g.idx: corrupt document index"),
    (lambda idx, b: b.unlink(), r"g.bin: no such file"),
])
def test_corrupt_mmap_corpus(good_prefix, damage, message):
    damage(good_prefix.with_suffix(".idx"), good_prefix.with_suffix(".bin"))
    with pytest.raises(DataError, match=message):
        open_mmap(good_prefix)


def test_empty_mmap_corpus(tmp_path):
    from llmc.frontends.data.writer import write_index

    write_index(tmp_path / "z.idx", np.dtype(np.uint16), np.array([0, 0]), np.arange(3))
    (tmp_path / "z.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty corpus"):
        open_mmap(tmp_path / "z")
    with pytest.raises(DataError, match="no corpus there"):
        open_corpus(tmp_path / "nothing")


def test_paddlenlp_reader_accepts_prepare_output(tmp_path, tok, corpus_jsonl):
    indexed_dataset = pytest.importorskip("paddlenlp.data.indexed_dataset")
    prepare(corpus_jsonl, tmp_path / "pn", tok)
    ds = indexed_dataset.make_dataset(str(tmp_path / "pn"), "mmap", skip_warmup=True)
    assert [ds[i].tolist() for i in range(len(ds))] == expected_docs(tok)
    assert ds.doc_idx.tolist() == list(range(len(TEXTS) + 1))


def test_text_corpus_bad_input(tmp_path, tok):
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n\n', "utf-8")
    with pytest.raises(DataError, match=r"blank.jsonl: empty corpus"):
        open_corpus(blank, tok)
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"Hello \xff world\n")
    with pytest.raises(DataError, match=r"raw.txt: not UTF-8"):
        open_corpus(raw, tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Hello world"}\n{"text": "unterminated\n', "utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        open_corpus(bad, tok)
    skipped = open_corpus(bad, tok, on_error="skip")
    assert skipped.stats.skipped_lines == 1 and skipped.num_tokens == len(
        tok.encode("Hello world", add_special_tokens=False)) + 1
