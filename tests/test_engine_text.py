"""Incremental text: no half UTF-8 characters on byte-fallback tokenizers (sentencepiece
``<0xE9>`` pieces, byte-level BPE), every delta continues the final text, stop strings
cut the text and are held back until decided; the engine's text follows."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from engine_toy import ToyLM

from llmc.frontends.fixtures import CORPUS, write_sentencepiece, write_tokenizer_json
from llmc.frontends.tokenizer import load_tokenizer
from llmc.runtime.engine import Engine, GenerationParams
from llmc.runtime.textstream import Detokenizer, StopMatcher, TextStream

# 龍 and 骧 are not in CORPUS: the byte-fallback tokenizers spell them in bytes
TEXTS = ["今天天气很好，我们去龍骧散步。", "大模型 compiles 龍 graphs, 百川大模型", "Hello world 🙂 ok"]
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _write_configs(d, **config):
    (d / "tokenizer_config.json").write_text(json.dumps({**SPECIALS, **config}))
    (d / "special_tokens_map.json").write_text(json.dumps(SPECIALS))


def byte_fallback_sentencepiece(d):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, hard_vocab_limit=False, unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    _write_configs(d, add_bos_token=True, add_eos_token=False)
    return load_tokenizer(d)


def byte_level_bpe(d):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.save(str(d / "tokenizer.json"))
    _write_configs(d)
    return load_tokenizer(d)


@pytest.fixture(scope="module", params=["sp-byte-fallback", "byte-level-bpe"])
def byte_tok(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    return (byte_fallback_sentencepiece if request.param.startswith("sp") else byte_level_bpe)(d)


@pytest.fixture(scope="module", params=["sentencepiece", "tokenizer.json"])
def llama_tok(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    (write_sentencepiece if request.param == "sentencepiece" else write_tokenizer_json)(d, 256)
    return load_tokenizer(d)


def stream_deltas(tok, prompt, ids):
    stream = TextStream(tok, prompt)
    deltas = [stream.push(t) for t in ids]
    return deltas, deltas[-1:] and stream.finish()


def test_no_half_characters(byte_tok):
    for text in TEXTS:
        ids = byte_tok.encode(text, add_special_tokens=False)
        partial = [byte_tok.decode(ids[:k]) for k in range(1, len(ids))]
        assert any(p.endswith("\ufffd") for p in partial), "the text must split a character"
        deltas, tail = stream_deltas(byte_tok, [], ids)
        assert not any("\ufffd" in d for d in deltas)
        assert "".join(deltas) + tail == byte_tok.decode(ids)


def check_prefix_consistent(tok, ids, split):
    full, head = tok.decode(ids), tok.decode(ids[:split])
    if not full.startswith(head) or head.endswith("\ufffd"):
        return
    want = full[len(head):]
    stream, shown = TextStream(tok, ids[:split]), ""
    for t in ids[split:]:
        shown += stream.push(t)
        assert want.startswith(shown), (shown, want)
    assert shown + stream.finish() == want


def test_deltas_continue_the_prompt(byte_tok, llama_tok):
    for tok in (byte_tok, llama_tok):
        for text in TEXTS + CORPUS[:3]:
            ids = tok.encode(text)
            for split in range(1, len(ids)):
                check_prefix_consistent(tok, ids, split)


def test_random_token_sequences_stay_prefix_consistent(byte_tok, llama_tok):
    rnd = random.Random(0)
    for tok in (byte_tok, llama_tok):
        pool = [i for text in TEXTS + CORPUS for i in tok.encode(text, add_special_tokens=False)]
        for _ in range(40):
            ids = [rnd.choice(pool) for _ in range(rnd.randint(2, 25))]
            check_prefix_consistent(tok, [tok.bos_token_id or 1] + ids, 1)


def test_leading_space_of_the_first_new_token(llama_tok):
    prompt = llama_tok.encode("Hello")
    new = llama_tok.encode("Hello world", add_special_tokens=False)[len(prompt) - 1:]
    deltas, tail = stream_deltas(llama_tok, prompt, new)
    assert "".join(deltas) + tail == " world"


def test_detokenizer_flush_emits_an_unfinished_character(byte_tok):
    ids = byte_tok.encode("龍", add_special_tokens=False)
    detok = Detokenizer(byte_tok)
    assert "".join(detok.push(t) for t in ids[:-1]) in ("", " ")
    assert "\ufffd" in detok.flush()


STOP_CASES = [
    ("The answer is 42.\nUser: next", ["\nUser:"], "The answer is 42."),
    ("abcabcabd tail", ["abd", "cab"], "ab"),
    ("no stop here at all", ["stop!", "xyz"], "no stop here at all"),
    ("龍骧散步 then ###END### more", ["###END###", "##X"], "龍骧散步 then "),
    ("aaaa", ["aaab"], "aaaa"),
]


@pytest.mark.parametrize("text, stops, want", STOP_CASES)
def test_stop_matcher_over_every_split(text, stops, want):
    rnd = random.Random(1)
    for _ in range(200):
        cuts = sorted(rnd.sample(range(1, len(text)), rnd.randint(0, min(6, len(text) - 1))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        matcher, shown = StopMatcher(stops), ""
        for piece in pieces:
            shown += matcher.push(piece)
            assert want.startswith(shown) and not any(s in shown for s in stops)
        shown += matcher.flush()
        assert shown == want
        assert (matcher.stopped is not None) == (want != text)


def test_stop_matcher_holds_only_possible_prefixes():
    matcher = StopMatcher(["</answer>"])
    assert matcher.push("yes </an") == "yes "
    assert matcher.push("d") == "</and"
    assert matcher.push("</answer> after") == "" and matcher.stopped == "</answer>"
    assert matcher.push("more") == "" and matcher.flush() == ""


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    return byte_fallback_sentencepiece(tmp_path_factory.mktemp("engine_sp"))


def test_engine_text_and_stop_strings(sp_tok):
    model = ToyLM(vocab_size=sp_tok.vocab_size, seed=3, sharp=1.0)
    engine = Engine(model, sp_tok)
    prompt = sp_tok.encode("今天天气很好")
    base = GenerationParams(max_new_tokens=40, temperature=0.8, seed=1)
    free = engine.generate([prompt], base)
    text = free.texts[0]
    assert text == sp_tok.decode(prompt + free.tokens[0])[len(sp_tok.decode(prompt)):]
    # a stop string from the middle of the text, made of whole characters
    stop = next(text[i:i + 3] for i in range(8, len(text) - 3)
                if "\ufffd" not in text[i:i + 3] and text[i:i + 3].strip())
    deltas = []
    res = engine.generate([prompt, prompt], [
        GenerationParams(max_new_tokens=40, temperature=0.8, seed=1, stop=[stop]), base],
        on_token=lambda row, tok, delta: deltas.append((row, delta)))
    assert res.texts[0] == text[: text.find(stop)]
    assert res.rows[0].finish_reason == "stop"
    assert res.tokens[0] == free.tokens[0][: len(res.tokens[0])]
    assert len(res.tokens[0]) < 40
    assert res.texts[1] == text and res.rows[1].finish_reason == "length"
    for row in (0, 1):
        assert "".join(d for r, d in deltas if r == row) == res.texts[row]


def test_engine_eos_text_is_not_shown(sp_tok):
    model = ToyLM(vocab_size=sp_tok.vocab_size, seed=3)
    prompt = sp_tok.encode("大模型")
    free = Engine(model, sp_tok).generate([prompt], GenerationParams(max_new_tokens=8))
    eos = free.tokens[0][4]
    res = Engine(ToyLM(vocab_size=sp_tok.vocab_size, seed=3), sp_tok).generate(
        [prompt], GenerationParams(max_new_tokens=8, eos_token_id=[eos, 2]))
    cut = free.tokens[0].index(eos)
    assert res.tokens[0] == free.tokens[0][: cut + 1]
    assert res.texts[0] == sp_tok.decode(prompt + free.tokens[0][:cut])[len(sp_tok.decode(prompt)):]
    assert np.all(np.asarray(res.tokens[0]) < sp_tok.vocab_size)
