"""Samplers: fixed-length windows of the token stream, reproducible by seed, resumable from a
small JSON state; SFT packing restarts positions per example and marks segment bounds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmc.frontends import fixtures as F
from llmc.frontends.data import (IGNORE_INDEX, DataError, SFTBatcher, SFTExample, TokenCorpus,
                                 WindowSampler, block_causal_mask, collate, cu_seqlens,
                                 load_sft, open_corpus, pack_rows, prepare,
                                 startend_row_indices)
from llmc.frontends.data.sft import SFTDataset
from llmc.frontends.data.jsonl import DataStats
from llmc.frontends.tokenizer import load_tokenizer


def stream_corpus(n=1000, pieces=(7, 300, 1, 500, 192), offsets=None):
    data = np.arange(n, dtype=np.int64) * 3
    sizes = np.array(pieces)
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1] if offsets is None else offsets
    return TokenCorpus("mem", data, sizes, np.array(starts), np.arange(len(sizes) + 1))


def test_windows_are_stream_slices():
    corpus = stream_corpus()
    sampler = WindowSampler(corpus, seq_len=16, batch_size=4, seed=1)
    assert sampler.windows_per_epoch == (1000 - 1) // 16
    seen = set()
    for _ in range(sampler.windows_per_epoch // 4):
        batch = sampler.next_batch()
        assert batch.shape == (4, 17) and batch.dtype == np.int64
        for w in batch:
            start = int(w[0]) // 3
            assert start % 16 == 0 and w.tolist() == (np.arange(start, start + 17) * 3).tolist()
            seen.add(start)
    assert len(seen) == (sampler.windows_per_epoch // 4) * 4  # no repeats inside an epoch


def test_non_contiguous_sequences_are_gathered():
    # the sequences lie in the data array in another order than the stream
    corpus = stream_corpus(n=30, pieces=(10, 20), offsets=[20, 0])
    assert not corpus.contiguous
    expected = list(range(20, 30)) + list(range(0, 20))
    assert (corpus.tokens(5, 25) // 3).tolist() == expected[5:25]


def test_seed_reproducible_and_epochs_reshuffle():
    a = WindowSampler(stream_corpus(), 16, 4, seed=7)
    b = WindowSampler(stream_corpus(), 16, 4, seed=7)
    c = WindowSampler(stream_corpus(), 16, 4, seed=8)
    runs = [[s.next_batch() for _ in range(30)] for s in (a, b, c)]
    assert all((x == y).all() for x, y in zip(runs[0], runs[1]))
    assert any((x != z).any() for x, z in zip(runs[0], runs[2]))
    assert a.order.epoch >= 1  # 30 batches of 4 crossed the 62-window epoch
    ordered = WindowSampler(stream_corpus(), 16, 2, shuffle=False)
    assert [int(w[0]) // 3 for w in ordered.next_batch()] == [0, 16]


def test_resume_continues_exactly():
    straight = WindowSampler(stream_corpus(), 16, 3, seed=3)
    expected = [straight.next_batch() for _ in range(40)]
    first = WindowSampler(stream_corpus(), 16, 3, seed=3)
    got = [first.next_batch() for _ in range(17)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = WindowSampler(stream_corpus(), 16, 3, seed=3)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(23)]
    assert all((x == y).all() for x, y in zip(expected, got))


def test_resume_refuses_other_data():
    state = WindowSampler(stream_corpus(), 16, 3).state_dict()
    with pytest.raises(DataError, match="seq_len=16 but this run has seq_len=8"):
        WindowSampler(stream_corpus(), 8, 3).load_state_dict(state)
    with pytest.raises(DataError, match="tokens=1000 but this run has tokens=500"):
        WindowSampler(stream_corpus(n=500, pieces=(500,)), 16, 3).load_state_dict(state)
    with pytest.raises(DataError, match="state is corrupt"):
        WindowSampler(stream_corpus(), 16, 3).load_state_dict({**state, "position": 999})


def test_corpus_too_short_for_one_window():
    with pytest.raises(DataError, match=r"mem: 10 tokens, fewer than one window of 17"):
        WindowSampler(stream_corpus(n=10, pieces=(10,)), 16, 1)


def test_prepared_corpus_windows(tmp_path):
    d = tmp_path / "tok"
    F.write_tokenizer_json(d, 256)
    tok = load_tokenizer(d)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                              for t in F.CORPUS), "utf-8")
    prepare(tmp_path / "c.jsonl", tmp_path / "c", tok)
    corpus = open_corpus(tmp_path / "c")
    batch = WindowSampler(corpus, 8, 2, seed=0).next_batch()
    stream = corpus.tokens(0, corpus.num_tokens).astype(np.int64)
    for w in batch:
        starts = [i for i in range(0, len(stream) - 8, 8) if (stream[i:i + 9] == w).all()]
        assert starts


def example(n, first):
    ids = np.arange(first, first + n, dtype=np.int64)
    labels = np.where(np.arange(n) % 2 == 0, ids + 1, IGNORE_INDEX)
    return SFTExample(ids, labels)


def test_pack_rows_first_fit_keeps_every_example():
    lengths = [5, 9, 3, 2, 8, 1, 10]
    rows = pack_rows(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert rows[0] == [0, 2, 3] and len(rows) == 4
    with pytest.raises(DataError, match="example 1 has 11 tokens"):
        pack_rows([3, 11], 10)


def test_collate_packed_row():
    a, b = example(3, 10), example(4, 20)
    batch = collate([[a, b], [b]], pad_id=0, length=8)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 20, 21, 22, 23, 0]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert batch["segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 2, 2, 0]
    assert batch["segment_ids"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch["labels"][0].tolist() == a.labels.tolist() + b.labels.tolist() + [IGNORE_INDEX]
    assert (batch["labels"][1, 4:] == IGNORE_INDEX).all()


def test_attention_descriptions_agree():
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    mask = block_causal_mask(seg)
    assert mask[0, 3].tolist() == [False, False, False, True, False, False]
    assert mask[0, 2].tolist() == [True, True, True, False, False, False]
    assert not mask[0, 5].any() and mask[1].tolist() == np.tril(np.ones((6, 6), bool)).tolist()
    assert cu_seqlens(seg).tolist() == [0, 3, 5, 6, 12]
    ends = startend_row_indices(seg)
    assert ends.tolist() == [[3, 3, 3, 5, 5, 6], [6] * 6]
    # the flashmask bounds describe the same mask: row i sees column j iff j <= i < ends[j]
    rows = np.arange(6)[:, None]
    for b in range(2):
        same = (rows >= np.arange(6)[None, :]) & (rows < ends[b][None, :])
        same &= seg[b][None, :] != 0
        assert (same == mask[b]).all()


def test_sft_batcher_packs_and_resumes(tmp_path):
    d = tmp_path / "tok"
    F.write_tokenizer_json(d, 256, chat_template=None)
    tok = load_tokenizer(d)
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"src": f"Hello {i}", "tgt": "world " * (i % 4 + 1)})
                            + "\n" for i in range(12)), "utf-8")
    ds = load_sft(path, tok, 32)
    packed = SFTBatcher(ds, 2, pad_id=0, seed=5, pack=True, pad_to=32)
    assert len(packed.rows) < len(ds)
    batch = packed.next_batch()
    assert batch["input_ids"].shape == (2, 32)
    assert (batch["segment_ids"].max(axis=1) > 1).any()
    total_targets = sum(int((e.labels != IGNORE_INDEX).sum()) for e in ds.examples)
    one_by_one = SFTBatcher(ds, 1, pad_id=0, seed=5, pack=True)
    epoch = [one_by_one.next_batch() for _ in range(len(one_by_one.rows))]
    assert sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in epoch) == total_targets
    assert one_by_one.order.epoch == 1 and one_by_one.order.position == 0
    state = packed.state_dict()
    again = SFTBatcher(ds, 2, pad_id=0, seed=5, pack=True, pad_to=32)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert all((packed.next_batch()[k] == again.next_batch()[k]).all() for k in batch)
    with pytest.raises(DataError, match="pack=True but this run has pack=False"):
        SFTBatcher(ds, 2, pad_id=0, seed=5).load_state_dict(state)


def test_empty_dataset_refused():
    with pytest.raises(DataError, match="empty"):
        SFTBatcher(SFTDataset("x", [], DataStats(), 8), 2, pad_id=0)


def test_windows_to_batch_and_pad_id():
    from llmc.frontends.data import default_pad_id, windows_to_batch

    w = WindowSampler(stream_corpus(), 8, 2, seed=0).next_batch()
    batch = windows_to_batch(w)
    assert (batch["input_ids"] == w[:, :-1]).all() and (batch["labels"] == w[:, 1:]).all()
    assert batch["position_ids"][1].tolist() == list(range(8))
    assert block_causal_mask(batch["segment_ids"])[0].tolist() == \
        np.tril(np.ones((8, 8), bool)).tolist()
    with pytest.raises(DataError, match="windows must be"):
        windows_to_batch(np.zeros((2, 1)))

    class Tok:
        pad_token_id, eos_token_id = None, 2
    assert default_pad_id(Tok()) == 2
    Tok.eos_token_id = None
    assert default_pad_id(Tok()) == 0


def _rope_attention(ids, positions, mask, dim=8, seed=0):
    """A one-head rotary attention layer in numpy, the contract's consumer."""
    rng = np.random.default_rng(seed)
    emb, wq, wk, wv = (rng.standard_normal(s) for s in ((64, dim), (dim, dim), (dim, dim),
                                                        (dim, dim)))
    x = emb[ids]
    inv = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)
    ang = positions[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):
        a, b = t[:, 0::2], t[:, 1::2]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=1)
    scores = rope(x @ wq) @ rope(x @ wk).T / np.sqrt(dim)
    scores = np.where(mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)) @ (x @ wv)


def test_packed_row_attends_like_separate_examples():
    a, b = example(5, 3), example(4, 40)
    packed = collate([[a, b]], pad_id=0)
    out = _rope_attention(packed["input_ids"][0], packed["position_ids"][0],
                          block_causal_mask(packed["segment_ids"])[0])
    for ex, span in ((a, slice(0, 5)), (b, slice(5, 9))):
        alone = collate([[ex]], pad_id=0)
        ref = _rope_attention(alone["input_ids"][0], alone["position_ids"][0],
                              block_causal_mask(alone["segment_ids"])[0])
        np.testing.assert_allclose(out[span], ref, rtol=1e-12, atol=1e-12)
    # without the mask or the restarted positions the second example would differ
    wrong = _rope_attention(packed["input_ids"][0], packed["position_ids"][0],
                            np.tril(np.ones((9, 9), bool)))
    assert not np.allclose(wrong[5:], out[5:])
