"""Supervised fine-tuning examples from `{"src": ..., "tgt": ...}` jsonl (PaddleNLP's format).

`src` and `tgt` are each a string or a list of strings of the same length: a multi-turn
dialogue src[0], tgt[0], src[1], tgt[1], ... An optional `"system"` string opens it.

Token layout:
- with the checkpoint's chat template (a Jinja `chat_template`, or Baichuan's reserved
  user/assistant ids), the dialogue is rendered turn by turn; what the template adds for an
  assistant turn (its text and end-of-turn markers) is the target; EOS is appended to a
  target that does not already hold it;
- without one, plain concatenation as PaddleNLP's SFT does: the first source encoded with
  the tokenizer's own special tokens (its BOS convention), the other texts without, and EOS
  after every target.
Loss is taken on target tokens only. Examples come out already shifted: `labels[i]` is the
token to predict after `input_ids[i]` (or -100), so a trainer takes the plain cross-entropy
of logits[i] against labels[i], ignoring -100, and must not shift again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .jsonl import DataError, DataStats, iter_jsonl

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    """One tokenized example: `input_ids` and shifted `labels` of equal length."""

    input_ids: np.ndarray
    labels: np.ndarray
    line: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


class SFTDataset:
    """The tokenized examples of one SFT file and the counts of what reading it did."""

    def __init__(self, path: Path, examples: list[SFTExample], stats: DataStats,
                 max_length: int):
        self.path, self.examples, self.stats, self.max_length = path, examples, stats, max_length

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> SFTExample:
        return self.examples[i]


def turns_of(example: dict, where: str) -> tuple[list[str], list[str], str | None]:
    """The (sources, targets, system) of one jsonl object, or DataError naming `where`."""
    for key in ("src", "tgt"):
        if key not in example:
            raise DataError(f"{where}: missing field '{key}'")
    src, tgt = (_strings(example[k], k, where) for k in ("src", "tgt"))
    if len(src) != len(tgt):
        raise DataError(f"{where}: 'src' has {len(src)} turns but 'tgt' has {len(tgt)}")
    system = example.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string, got "
                        f"{type(system).__name__}")
    return src, tgt, system


def _strings(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and not value:
        raise DataError(f"{where}: field '{key}' is an empty list")
    what = type(value).__name__ if not isinstance(value, list) else "a list holding " + next(
        type(v).__name__ for v in value if not isinstance(v, str))
    raise DataError(f"{where}: field '{key}' must be a string or a list of strings, got {what}")


def uses_chat_template(tokenizer, chat_template: bool | None) -> bool:
    """Whether to render with the checkpoint's chat format: `None` means when it has one."""
    has = bool(getattr(tokenizer, "has_chat_template", False))
    if chat_template and not has:
        raise DataError(f"{getattr(tokenizer, 'model_dir', 'tokenizer')}: chat_template "
                        "requested but the checkpoint has none")
    return has if chat_template is None else bool(chat_template)


def segments(tokenizer, src: Sequence[str], tgt: Sequence[str], system: str | None = None,
             chat_template: bool | None = None) -> list[tuple[list[int], bool]]:
    """The dialogue as (token ids, is_target) pieces in order (see the module docstring)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"{getattr(tokenizer, 'model_dir', 'tokenizer')}: no EOS token id "
                        "(tokenizer_config.json / generation_config.json); SFT needs one")
    if uses_chat_template(tokenizer, chat_template):
        return _template_segments(tokenizer, src, tgt, system, eos)
    return _plain_segments(tokenizer, src, tgt, system, eos)


def _plain_segments(tokenizer, src, tgt, system, eos) -> list[tuple[list[int], bool]]:
    pieces: list[tuple[list[int], bool]] = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        prompt = s if i or system is None else system + "\n" + s
        ids = tokenizer.encode(prompt, add_special_tokens=i == 0)
        if i == 0 and ids and ids[-1] == eos and getattr(tokenizer, "add_eos", False):
            ids = ids[:-1]  # an add_eos_token tokenizer would close the prompt, not the turn
        pieces += [(ids, False), (tokenizer.encode(t, add_special_tokens=False) + [eos], True)]
    return pieces


def _template_segments(tokenizer, src, tgt, system, eos) -> list[tuple[list[int], bool]]:
    """Render growing prefixes of the dialogue and take the differences, so each piece is
    exactly what the template adds for that turn."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    pieces: list[tuple[list[int], bool]] = []
    done: str | list[int] = ""
    for s, t in zip(src, tgt):
        messages.append({"role": "user", "content": s})
        prompt = _render(tokenizer, messages, True)
        messages.append({"role": "assistant", "content": t})
        full = _render(tokenizer, messages, False)
        if isinstance(done, str) and not isinstance(prompt, str):
            done = []
        if prompt[:len(done)] != done or full[:len(prompt)] != prompt:
            raise DataError(f"{getattr(tokenizer, 'model_dir', 'tokenizer')}: the chat "
                            "template does not render a dialogue as a prefix of its "
                            "continuation; use chat_template=False")
        target = _ids(tokenizer, full[len(prompt):])
        pieces += [(_ids(tokenizer, prompt[len(done):]), False),
                   (target if eos in target else target + [eos], True)]
        done = full
    return pieces


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str | list[int]:
    tokenize = getattr(tokenizer, "chat_template", None) is None  # Baichuan's reserved ids
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                         tokenize=tokenize)


def _ids(tokenizer, piece: str | list[int]) -> list[int]:
    return tokenizer.encode(piece, add_special_tokens=False) if isinstance(piece, str) \
        else list(piece)


def build_example(pieces: list[tuple[list[int], bool]], max_length: int, stats: DataStats,
                  line: int = 0) -> SFTExample | None:
    """Join the pieces, cut the sequence so the model sees at most `max_length` inputs
    (counted in `stats`), and shift; None (counted as dropped) when no target token is left."""
    ids = np.array([i for p, _ in pieces for i in p], dtype=np.int64)
    target = np.array([t for p, t in pieces for _ in p], dtype=bool)
    if len(ids) > max_length + 1:
        stats.truncated_examples += 1
        stats.truncated_tokens += len(ids) - (max_length + 1)
        ids, target = ids[:max_length + 1], target[:max_length + 1]
    labels = np.where(target, ids, IGNORE_INDEX)[1:]
    if not (labels != IGNORE_INDEX).any():
        stats.dropped_examples += 1
        return None
    stats.examples += 1
    stats.tokens += len(ids) - 1
    stats.target_tokens += int((labels != IGNORE_INDEX).sum())
    return SFTExample(ids[:-1], labels, line)


def encode_sft(tokenizer, example: dict, max_length: int, stats: DataStats | None = None,
               chat_template: bool | None = None, where: str = "example") -> SFTExample | None:
    """One `{"src", "tgt"[, "system"]}` object as an SFTExample (None when truncation left
    no target token)."""
    if max_length < 1:
        raise DataError(f"max_length must be at least 1, not {max_length}")
    src, tgt, system = turns_of(example, where)
    pieces = segments(tokenizer, src, tgt, system, chat_template)
    return build_example(pieces, max_length, stats if stats is not None else DataStats())


def load_sft(path: str | Path, tokenizer, max_length: int, *, on_error: str = "fail",
             chat_template: bool | None = None) -> SFTDataset:
    """Tokenize every example of an SFT jsonl file (see the module docstring). Bad lines
    (malformed JSON, missing or non-string src/tgt) raise or are skipped per `on_error`;
    a file that yields no example raises DataError."""
    stats = DataStats()
    examples = []
    for number, obj in iter_jsonl(path, stats, on_error):
        where = f"{path}:{number}"
        try:
            example = encode_sft(tokenizer, obj, max_length, stats, chat_template, where)
        except DataError as e:
            if on_error == "fail" or not str(e).startswith(where):
                raise
            stats.note_error(str(e))
            continue
        if example is not None:
            example.line = number
            examples.append(example)
    if not examples:
        raise DataError(f"{path}: no usable SFT examples ({stats.skipped_lines} bad lines "
                        f"skipped, {stats.dropped_examples} left without target tokens)")
    return SFTDataset(Path(path), examples, stats, max_length)
