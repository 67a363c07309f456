"""Tiny fixture tokenizers: a BPE ``tokenizer.json`` (``tokenizers``) or a sentencepiece
model, trained on a small corpus and padded to the fixture's vocabulary size.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .fixture_configs import MAX_POSITIONS, BAICHUAN_ARCHES, dims

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny test corpus for the llmc graph compiler.",
    "A compiler lowers the model graph to fused kernels for every accelerator.",
    "Paddle and PyTorch checkpoints are converted into one graph representation.",
    "Large language models predict the next token from the previous tokens.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "大模型编译器把计算图编译成高效的内核。",
    "百川大模型和中文羊驼都基于LLaMA架构。",
    "今天天气很好，我们一起去公园散步吧。",
    "请把这段话翻译成英文：你好，世界！",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 and 2024 appear in text too.",
    "User: what is attention? Assistant: attention mixes values weighted by query key scores.",
]

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON with a trailing newline."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def prepare_dir(path: str | Path) -> Path:
    """``path`` as a Path, created (with parents) if missing."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _special_tokens() -> dict[str, str]:
    return {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def write_tokenizer_json(
    out_dir: str | Path,
    vocab_size: int = 256,
    chat_template: str | None = LLAMA2_CHAT_TEMPLATE,
    model_max_length: int = MAX_POSITIONS,
) -> Path:
    """Train a tiny Llama-style BPE (``<unk>``=0, ``<s>``=1, ``</s>``=2, ``▁`` metaspace, BOS
    prepended) on :data:`CORPUS`, pad it to exactly ``vocab_size`` with ``<extra_i>`` tokens,
    and write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = prepare_dir(out_dir)
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing < 0:
        raise ValueError(f"trained vocab {tok.get_vocab_size()} exceeds {vocab_size}")
    tok.add_special_tokens([f"<extra_{i}>" for i in range(missing)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    path = out / "tokenizer.json"
    tok.save(str(path))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens(),
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if chat_template:
        config["chat_template"] = chat_template
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "special_tokens_map.json", _special_tokens())
    return path


def sentencepiece_model_bytes(vocab_size: int = 256, trained_size: int = 200) -> bytes:
    """Serialized tiny sentencepiece BPE model (``<unk>``=0, ``<s>``=1, ``</s>``=2) trained on
    :data:`CORPUS`, padded with ``UNUSED`` ``<extra_i>`` pieces to exactly ``vocab_size``."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=min(trained_size, vocab_size),
        model_type="bpe",
        hard_vocab_limit=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    for i in range(len(proto.pieces), vocab_size):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = (
            f"<extra_{i}>",
            0.0,
            sp_pb2.ModelProto.SentencePiece.UNUSED,
        )
    return proto.SerializeToString()


def write_sentencepiece(
    out_dir: str | Path,
    vocab_size: int = 256,
    filename: str = "tokenizer.model",
    tokenizer_config: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny sentencepiece model (see :func:`sentencepiece_model_bytes`) as ``filename``
    plus ``tokenizer_config.json`` (defaults to a ``LlamaTokenizer`` config) and
    ``special_tokens_map.json``."""
    out = prepare_dir(out_dir)
    path = out / filename
    path.write_bytes(sentencepiece_model_bytes(vocab_size))
    config = (
        tokenizer_config
        if tokenizer_config is not None
        else {
            "tokenizer_class": "LlamaTokenizer",
            **_special_tokens(),
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": MAX_POSITIONS,
            "legacy": True,
        }
    )
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "special_tokens_map.json", _special_tokens())
    return path


def _baichuan_tokenizer_config() -> dict[str, Any]:
    return {
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "tokenizer_class": "BaichuanTokenizer",
        **_special_tokens(),
        "pad_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
    }


def write_hf_tokenizer(out: Path, arch: str) -> None:
    """The tokenizer files an HF checkpoint of ``arch`` ships (see frontends/fixtures.py)."""
    vocab = dims(arch)["vocab"]
    if arch in BAICHUAN_ARCHES:
        write_sentencepiece(out, vocab, tokenizer_config=_baichuan_tokenizer_config())
    elif arch == "chinese_llama2":
        cfg = {
            "tokenizer_class": "LlamaTokenizer",
            **_special_tokens(),
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": MAX_POSITIONS,
            "legacy": True,
            "chat_template": LLAMA2_CHAT_TEMPLATE,
        }
        write_sentencepiece(out, vocab, tokenizer_config=cfg)
    else:
        write_tokenizer_json(out, vocab)
