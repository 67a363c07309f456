"""SFT data: loss only on target tokens, chat templates or plain concatenation, truncation
counted, bad lines reported by line number."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmc.frontends import fixtures as F
from llmc.frontends.data import (IGNORE_INDEX, DataError, DataStats, encode_sft, load_sft)
from llmc.frontends.tokenizer import load_tokenizer

DIALOGUE = {"src": ["Hello world", "The fox?"], "tgt": ["Hi there", "lazy dog"]}


@pytest.fixture(scope="module")
def template_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tpl")
    F.write_tokenizer_json(d, 256)
    return load_tokenizer(d)


@pytest.fixture(scope="module")
def plain_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    F.write_tokenizer_json(d, 256, chat_template=None)
    return load_tokenizer(d)


@pytest.fixture(scope="module")
def baichuan_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("bc")
    F.write_fixture(d, "baichuan2_7b")
    return load_tokenizer(d)


def write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n"
                            for ln in lines), encoding="utf-8")
    return path


def targets(tok, example):
    """The labelled token ids, split into runs (one per target turn)."""
    runs, run = [], []
    for label in example.labels:
        if label == IGNORE_INDEX:
            if run:
                runs.append(run)
            run = []
        else:
            run.append(int(label))
    return runs + ([run] if run else [])


def test_plain_concatenation_labels_only_targets(plain_tok):
    tok = plain_tok
    ex = encode_sft(tok, DIALOGUE, 128)
    full = (tok.encode("Hello world") + tok.encode("Hi there", add_special_tokens=False)
            + [tok.eos_token_id] + tok.encode("The fox?", add_special_tokens=False)
            + tok.encode("lazy dog", add_special_tokens=False) + [tok.eos_token_id])
    assert full[0] == tok.bos_token_id
    assert ex.input_ids.tolist() == full[:-1]
    runs = targets(tok, ex)
    assert [tok.decode(r, skip_special_tokens=False) for r in runs] == \
        [tok.decode(tok.encode(t, add_special_tokens=False) + [tok.eos_token_id], False)
         for t in DIALOGUE["tgt"]]
    assert all(r[-1] == tok.eos_token_id for r in runs)
    # shifted: labels[i] is the token after input_ids[i]
    labelled = ex.labels != IGNORE_INDEX
    assert (ex.labels[labelled] == np.array(full[1:])[labelled]).all()


def test_chat_template_matches_the_whole_rendering(template_tok):
    tok = template_tok
    messages = [{"role": r, "content": c} for pair in zip(DIALOGUE["src"], DIALOGUE["tgt"])
                for r, c in zip(("user", "assistant"), pair)]
    full = tok.apply_chat_template(messages, add_generation_prompt=False)
    ex = encode_sft(tok, DIALOGUE, 256)
    assert ex.input_ids.tolist() == full[:-1] and ex.labels[-1] == full[-1]
    runs = targets(tok, ex)
    assert len(runs) == 2
    for run, answer in zip(runs, DIALOGUE["tgt"]):
        assert tok.decode(run).strip() == answer
        assert run[-1] == tok.eos_token_id
    prompt_only = tok.apply_chat_template(messages[:1], add_generation_prompt=True)
    assert (ex.labels[:len(prompt_only) - 1] == IGNORE_INDEX).all()


def test_chat_template_with_system_and_forced_plain(template_tok):
    ex = encode_sft(template_tok, {**DIALOGUE, "system": "Be brief."}, 256)
    assert "brief" in template_tok.decode(ex.input_ids)
    plain = encode_sft(template_tok, DIALOGUE, 256, chat_template=False)
    assert plain.input_ids.tolist() != ex.input_ids.tolist()
    assert "INST" not in template_tok.decode(plain.input_ids)


def test_chat_template_required_but_missing(plain_tok):
    with pytest.raises(DataError, match="chat_template requested"):
        encode_sft(plain_tok, DIALOGUE, 64, chat_template=True)


def test_baichuan_reserved_role_ids(baichuan_tok):
    tok = baichuan_tok
    user, assistant = F.BAICHUAN_USER_TOKEN_ID, F.BAICHUAN_ASSISTANT_TOKEN_ID
    ex = encode_sft(tok, {"src": "Hello", "tgt": "world"}, 64)
    ids = ex.input_ids.tolist()
    assert ids[0] == user and assistant in ids
    answer = tok.encode("world", add_special_tokens=False)
    assert targets(tok, ex) == [answer + [tok.eos_token_id]]
    assert ids[ids.index(assistant) + 1:] == answer


def test_truncation_is_counted(plain_tok):
    tok = plain_tok
    stats = DataStats()
    long = {"src": "Hello world", "tgt": "the quick brown fox jumps over the lazy dog " * 4}
    whole = encode_sft(tok, long, 1000)
    ex = encode_sft(tok, long, 10, stats)
    assert len(ex) == 10 and ex.input_ids.tolist() == whole.input_ids[:10].tolist()
    assert stats.truncated_examples == 1
    assert stats.truncated_tokens == len(whole) + 1 - 11
    # a cut that leaves no target token drops the example, counted
    stats = DataStats()
    prompt_len = len(tok.encode("Hello world"))
    assert encode_sft(tok, long, prompt_len - 1, stats) is None
    assert stats.dropped_examples == 1 and stats.examples == 0


def test_load_sft_counts_and_skips(tmp_path, plain_tok):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"src": "Hello", "tgt": "world"}, "{not json", "", {"src": 3, "tgt": "x"},
        {"src": ["a", "b"], "tgt": ["c"]}, {"tgt": "x"}, "[1, 2]",
        {"src": ["Hello", "again"], "tgt": ["world", "fox"]}])
    ds = load_sft(path, plain_tok, 64, on_error="skip")
    assert len(ds) == 2 and [e.line for e in ds.examples] == [1, 8]
    assert ds.stats.skipped_lines == 5 and ds.stats.examples == 2
    assert ds.stats.target_tokens == sum(int((e.labels != IGNORE_INDEX).sum())
                                         for e in ds.examples)
    lines = [e.split(":")[1] for e in ds.stats.errors]
    assert lines == ["2", "4", "5", "6", "7"]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"d.jsonl:2: malformed JSON"),
    ({"src": 3, "tgt": "x"}, r"d.jsonl:2: field 'src' must be a string or a list of strings, "
                             r"got int"),
    ({"src": ["a", None], "tgt": ["b", "c"]}, r"d.jsonl:2: field 'src' .* list holding NoneType"),
    ({"src": "a", "tgt": []}, r"d.jsonl:2: field 'tgt' is an empty list"),
    ({"src": "a"}, r"d.jsonl:2: missing field 'tgt'"),
    ({"src": "a", "tgt": "b", "system": 1}, r"d.jsonl:2: field 'system' must be a string"),
])
def test_load_sft_fails_on_the_first_bad_line(tmp_path, plain_tok, line, message):
    path = write_jsonl(tmp_path / "d.jsonl", [{"src": "a", "tgt": "b"}, line])
    with pytest.raises(DataError, match=message):
        load_sft(path, plain_tok, 64)


def test_load_sft_empty_and_missing(tmp_path, plain_tok):
    with pytest.raises(DataError, match="no usable SFT examples"):
        load_sft(write_jsonl(tmp_path / "e.jsonl", ["", "  "]), plain_tok, 64)
    with pytest.raises(DataError, match=r"no usable SFT examples \(1 bad lines"):
        load_sft(write_jsonl(tmp_path / "b.jsonl", ["oops"]), plain_tok, 64, on_error="skip")
    with pytest.raises(DataError, match="no such data file"):
        load_sft(tmp_path / "missing.jsonl", plain_tok, 64)
    with pytest.raises(DataError, match="on_error must be one of"):
        load_sft(tmp_path / "e.jsonl", plain_tok, 64, on_error="ignore")
    (tmp_path / "bin.jsonl").write_bytes(b'{"src": "\xff", "tgt": "b"}\n')
    with pytest.raises(DataError, match=r"bin.jsonl:1: not UTF-8"):
        load_sft(tmp_path / "bin.jsonl", plain_tok, 64)


def test_tiny_generated_sft_set(tmp_path, template_tok):
    from llmc.frontends.data.synthetic import write_tiny_sft, write_tiny_corpus

    a = write_tiny_sft(tmp_path / "a.jsonl", n=12, seed=3).read_text()
    assert a == write_tiny_sft(tmp_path / "b.jsonl", n=12, seed=3).read_text()
    assert a != write_tiny_sft(tmp_path / "c.jsonl", n=12, seed=4).read_text()
    ds = load_sft(tmp_path / "a.jsonl", template_tok, 128)
    assert len(ds) == 12 and ds.stats.truncated_examples == 0
    rows = [json.loads(line) for line in a.splitlines()]
    for row, ex in zip(rows, ds.examples):
        answers = row["tgt"] if isinstance(row["tgt"], list) else [row["tgt"]]
        assert [template_tok.decode(r).strip() for r in targets(template_tok, ex)] == answers
    assert sum(isinstance(r["tgt"], list) for r in rows) == 3
    lines = write_tiny_corpus(tmp_path / "t.jsonl", n=5).read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["text"] for line in lines)


def test_byte_order_mark_and_crlf(tmp_path, plain_tok):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"src": "Hello", "tgt": "world"}\r\n{"src": "a", "tgt": "b"}\r\n')
    ds = load_sft(path, plain_tok, 64)
    assert len(ds) == 2 and ds.examples[0].input_ids.tolist() == plain_tok.encode("Hello") + \
        plain_tok.encode("world", add_special_tokens=False)
