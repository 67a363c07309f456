"""Tokenizers loaded from a model directory, with the model's bos/eos/chat conventions.

`tokenizer.json` goes through the `tokenizers` package (its own post-processor
adds BOS, as transformers' fast tokenizers do); a sentencepiece model
(`tokenizer.model`, or PaddleNLP's `sentencepiece.bpe.model`) through
`sentencepiece`, adding BOS/EOS as `add_bos_token` / `add_eos_token` in
tokenizer_config.json say (LlamaTokenizer defaults: BOS yes, EOS no) and
splitting special tokens out of the text first (legacy LlamaTokenizer behaviour).

bos/eos ids come from, in order of preference: tokenizer_config.json,
special_tokens_map.json (token strings), generation_config.json, config.json (ids).
Chat: a Jinja `chat_template` (tokenizer_config.json, chat_template.jinja or
chat_template.json) rendered in a sandbox; Baichuan2's reserved user/assistant
token ids from generation_config.json when there is no template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from llmc.compiler.errors import LlmcError

SP_FILES = ("tokenizer.model", "sentencepiece.bpe.model")


class TokenizerError(LlmcError):
    """A tokenizer file that cannot be loaded or used."""


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read: {e}") from None
    except RecursionError:
        raise TokenizerError(f"{path}: cannot read: JSON nested too deeply") from None
    return data if isinstance(data, dict) else {}


def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


class Tokenizer:
    """Common behaviour: special ids, chat templates. Subclasses encode and decode."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self.config = _json(model_dir / "tokenizer_config.json")
        self._sources = [(model_dir / "tokenizer_config.json", self.config),
                         (model_dir / "special_tokens_map.json",
                          _json(model_dir / "special_tokens_map.json")),
                         (model_dir / "generation_config.json",
                          _json(model_dir / "generation_config.json")),
                         (model_dir / "config.json", _json(model_dir / "config.json"))]
        self.chat_template = self._find_chat_template()

    # ---- subclass interface
    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, i: int) -> str | None:
        raise NotImplementedError

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (with BOS/EOS as the checkpoint's config says)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        raise NotImplementedError

    # ---- special tokens
    def _special(self, kind: str) -> tuple[int | None, str | None]:
        for _, src in self._sources:
            tok = _token_str(src.get(f"{kind}_token"))
            if tok is not None and self.token_to_id(tok) is not None:
                return self.token_to_id(tok), tok
            i = src.get(f"{kind}_token_id")
            if isinstance(i, list) and i:
                i = i[0]
            if isinstance(i, int) and not isinstance(i, bool):
                return i, self.id_to_token(i)
        return None, None

    @property
    def bos_token_id(self) -> int | None:
        return self._special("bos")[0]

    @property
    def eos_token_id(self) -> int | None:
        return self._special("eos")[0]

    @property
    def pad_token_id(self) -> int | None:
        return self._special("pad")[0]

    # ---- chat
    def _find_chat_template(self) -> str | None:
        t = self.config.get("chat_template")
        if isinstance(t, list):
            named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
            t = named.get("default")
        if isinstance(t, str):
            return t
        jinja = self.model_dir / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        t = _json(self.model_dir / "chat_template.json").get("chat_template")
        return t if isinstance(t, str) else None

    @property
    def _baichuan_roles(self) -> tuple[int, int] | None:
        gen = self._sources[2][1]
        u, a = gen.get("user_token_id"), gen.get("assistant_token_id")
        return (u, a) if isinstance(u, int) and isinstance(a, int) else None

    @property
    def has_chat_template(self) -> bool:
        """Whether the checkpoint defines a chat format."""
        return self.chat_template is not None or self._baichuan_roles is not None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = True) -> list[int] | str:
        """Render `messages` ({role, content}) in the model's chat format: ids, or text."""
        if self.chat_template is not None:
            text = render_chat(self.chat_template, messages, add_generation_prompt,
                               bos_token=self._special("bos")[1] or "",
                               eos_token=self._special("eos")[1] or "")
            return self.encode(text, add_special_tokens=False) if tokenize else text
        roles = self._baichuan_roles
        if roles is None:
            raise TokenizerError(f"{self.model_dir}: the checkpoint has no chat template "
                                 "(tokenizer_config.json 'chat_template', chat_template.jinja)")
        if not tokenize:
            raise TokenizerError(f"{self.model_dir}: Baichuan's chat format is made of reserved "
                                 "token ids; use tokenize=True")
        return self._baichuan_chat(messages, roles, add_generation_prompt)

    def _baichuan_chat(self, messages: list[dict], roles: tuple[int, int],
                       add_generation_prompt: bool) -> list[int]:
        ids: list[int] = []
        for m in messages:
            body = self.encode(str(m.get("content", "")), add_special_tokens=False)
            role = m.get("role")
            ids += body if role == "system" else [roles[0 if role == "user" else 1]] + body
        return ids + [roles[1]] if add_generation_prompt else ids


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool,
                **special: str) -> str:
    """Render a Hugging Face chat template in a Jinja sandbox."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str):
        raise TokenizerError(f"chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special)
    except TemplateError as e:
        raise TokenizerError(f"chat template: {e}") from None


class JsonTokenizer(Tokenizer):
    """A `tokenizer.json` (Hugging Face fast tokenizer) through the `tokenizers` package."""

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = model_dir / "tokenizer.json"
        try:
            self.tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise TokenizerError(f"{path}: cannot load tokenizer: {e}") from None
        super().__init__(model_dir)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tk.id_to_token(i)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tk.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model with LlamaTokenizer conventions."""

    def __init__(self, model_dir: Path, path: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(path.read_bytes())
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{path}: cannot load sentencepiece model: {e}") from None
        super().__init__(model_dir)
        self.add_bos = bool(self.config.get("add_bos_token", True))
        self.add_eos = bool(self.config.get("add_eos_token", False))
        self._specials = {t: i for kind in ("bos", "eos", "unk", "pad")
                          for i, t in [self._special(kind)] if t and i is not None}

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str | None:
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._encode_with_specials(text)
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        if add_special_tokens and self.add_eos and self.eos_token_id is not None:
            ids = ids + [self.eos_token_id]
        return ids

    def _encode_with_specials(self, text: str) -> list[int]:
        ids: list[int] = []
        while text:
            hits = [(text.find(t), t) for t in self._specials if t in text]
            if not hits:
                return ids + self.sp.encode(text)
            pos, tok = min(hits)
            if text[:pos].strip():
                ids += self.sp.encode(text[:pos])
            ids.append(self._specials[tok])
            text = text[pos + len(tok):]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        special = set(self._specials.values())
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in special)]
        return self.sp.decode(ids)


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of a model directory (tokenizer.json preferred over sentencepiece)."""
    d = Path(model_dir)
    if (d / "tokenizer.json").is_file():
        return JsonTokenizer(d)
    for name in SP_FILES:
        if (d / name).is_file():
            return SentencePieceTokenizer(d, d / name)
    raise TokenizerError(f"{d}: no tokenizer (looked for tokenizer.json, "
                         f"{', '.join(SP_FILES)})")
