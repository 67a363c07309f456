"""Tokenizers from a model directory: ids match the reference libraries, special ids follow
the checkpoint's config files, chat formats render."""

from __future__ import annotations

import json

import pytest

from llmc.frontends import fixtures as F
from llmc.frontends.tokenizer import (JsonTokenizer, SentencePieceTokenizer, TokenizerError,
                                      load_tokenizer)

TEXTS = ["Hello world, the compiler lowers graphs.", "大模型编译器 and Paddle.", ""]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"},
        {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "The fox?"}]


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tj")
    F.write_tokenizer_json(d, 256)
    return d


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    F.write_sentencepiece(d, 256)
    return d


def test_tokenizer_json_matches_tokenizers(json_dir):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(json_dir / "tokenizer.json"))
    tok = load_tokenizer(json_dir)
    assert isinstance(tok, JsonTokenizer) and tok.vocab_size == 256
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text).ids
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Hello")[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2


def test_tokenizer_json_matches_transformers(json_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(json_dir))
    tok = load_tokenizer(json_dir)
    for text in TEXTS:
        assert tok.encode(text) == hf.encode(text)
    ids = hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert tok.apply_chat_template(CHAT) == list(ids)


def test_sentencepiece_adds_bos_and_splits_specials(sp_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = load_tokenizer(sp_dir)
    assert isinstance(tok, SentencePieceTokenizer)
    for text in TEXTS[:2]:
        assert tok.encode(text) == [1] + sp.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a</s>b", add_special_tokens=False) == sp.encode("a") + [2] + sp.encode("b")


def test_paddlenlp_sentencepiece_name(tmp_path):
    F.write_sentencepiece(tmp_path, 256, filename="sentencepiece.bpe.model")
    assert load_tokenizer(tmp_path).encode("Hello")[0] == 1


def test_special_ids_follow_config_preference(tmp_path):
    F.write_sentencepiece(tmp_path, 256, tokenizer_config={"add_bos_token": False})
    (tmp_path / "special_tokens_map.json").unlink()
    gen = {"bos_token_id": 5, "eos_token_id": [7, 2]}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 9, "eos_token_id": 9}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id) == (5, 7)
    assert tok.encode("Hello")[0] != 5  # add_bos_token false
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "</s>"}}))
    assert load_tokenizer(tmp_path).bos_token_id == 2
    (tmp_path / "generation_config.json").unlink()
    assert load_tokenizer(tmp_path).eos_token_id == 9


def test_chat_template_from_jinja_file(sp_dir, tmp_path):
    F.write_sentencepiece(tmp_path, 256)
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok = load_tokenizer(tmp_path)
    assert tok.apply_chat_template(CHAT[1:2], tokenize=False) == "<user>Hello world<assistant>"
    assert not load_tokenizer(sp_dir).has_chat_template
    with pytest.raises(TokenizerError, match="no chat template"):
        load_tokenizer(sp_dir).apply_chat_template(CHAT)


def test_baichuan_chat_uses_reserved_role_ids(tmp_path):
    d = F.write_fixture(tmp_path, "baichuan2_7b", "hf-numpy")
    tok = load_tokenizer(d)
    user, assistant = F.BAICHUAN_USER_TOKEN_ID, F.BAICHUAN_ASSISTANT_TOKEN_ID
    ids = tok.apply_chat_template(CHAT[1:3] + CHAT[3:])
    hello, hi, fox = (tok.encode(m["content"], add_special_tokens=False) for m in CHAT[1:])
    assert ids == [user] + hello + [assistant] + hi + [user] + fox + [assistant]
    assert tok.encode("Hello world") == hello  # Baichuan: add_bos_token false


def test_missing_and_corrupt_tokenizers(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: cannot load"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: cannot load"):
        load_tokenizer(tmp_path)
