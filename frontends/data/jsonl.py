"""Reading training files line by line, with bad lines reported by file and line number.

Every reader in this package takes `on_error`: "fail" raises `DataError` at the first bad
line; "skip" drops it and counts it in `DataStats.skipped_lines` (the first few messages are
kept in `DataStats.errors` so a caller can show them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llmc.compiler.errors import LlmcError

ON_ERROR = ("fail", "skip")
KEPT_MESSAGES = 20


class DataError(LlmcError):
    """A training or evaluation data file that cannot be used; the message names the file
    (and line, sequence or field) at fault."""


@dataclass
class DataStats:
    """What reading a data set did: counts a trainer can print and a test can check."""

    examples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    skipped_lines: int = 0
    truncated_examples: int = 0
    truncated_tokens: int = 0
    dropped_examples: int = 0
    errors: list[str] = field(default_factory=list)

    def note_error(self, message: str) -> None:
        """Count one skipped line and keep its message (the first few only)."""
        self.skipped_lines += 1
        if len(self.errors) < KEPT_MESSAGES:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return {k: v for k, v in self.__dict__.items()}


def check_on_error(on_error: str) -> None:
    """Refuse an unknown `on_error` policy."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")


def report(stats: DataStats, on_error: str, message: str) -> None:
    """Apply the `on_error` policy to one bad line: raise, or count and go on."""
    if on_error == "fail":
        raise DataError(message)
    stats.note_error(message)


def existing_file(path: str | Path) -> Path:
    """`path` as a Path, or DataError when it is not a readable file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such data file")
    return p


def iter_jsonl(path: str | Path, stats: DataStats, on_error: str = "fail"
               ) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every JSON object line of `path`; blank lines are ignored,
    undecodable or non-object lines go through the `on_error` policy."""
    check_on_error(on_error)
    p = existing_file(path)
    with p.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, as Windows editors write
            obj, problem = _parse_line(raw)
            if problem:
                report(stats, on_error, f"{p}:{number}: {problem}")
                continue
            yield number, obj


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON: {e.msg} (column {e.colno})"
    except RecursionError:
        return None, "malformed JSON: nested too deeply"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    return obj, None


def iter_text_documents(path: str | Path, stats: DataStats, on_error: str = "fail",
                        key: str = "text") -> Iterator[tuple[int, str]]:
    """(line number, text) of each document of a corpus: `{"text": ...}` lines of a
    .jsonl/.json file, or the blank-line separated paragraphs of any other (raw text) file."""
    p = existing_file(path)
    if p.suffix.lower() in (".jsonl", ".json"):
        for number, obj in iter_jsonl(p, stats, on_error):
            text = obj.get(key)
            if not isinstance(text, str):
                got = "missing" if key not in obj else type(text).__name__
                report(stats, on_error, f"{p}:{number}: field '{key}' must be a string, "
                                        f"got {got}")
                continue
            yield number, text
        return
    yield from _paragraphs(p)


def _paragraphs(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    lines: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip():
            start = start or number
            lines.append(line)
        elif lines:
            yield start, "\n".join(lines)
            lines, start = [], 0


def read_text_documents(path: str | Path, on_error: str = "fail", key: str = "text"
                        ) -> tuple[list[str], DataStats]:
    """The texts of every non-blank document of a corpus (as `iter_text_documents` reads
    them) and what reading did; DataError when no document is left."""
    stats = DataStats()
    texts = [t for _, t in iter_text_documents(path, stats, on_error, key) if t.strip()]
    if not texts:
        raise DataError(f"{path}: no text documents ({stats.skipped_lines} bad lines skipped)")
    stats.examples = len(texts)
    return texts, stats
