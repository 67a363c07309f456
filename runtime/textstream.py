"""Incremental text of a token stream: never half a UTF-8 character, never a stop string.

`Detokenizer` decodes a short window of tokens and emits only the new, stable suffix: a
token often holds part of a character (sentencepiece byte-fallback pieces like ``<0xE4>``;
byte-level BPE), and decoding such a prefix yields U+FFFD, so while the window's text ends
in U+FFFD nothing is emitted. The window starts at the tokens shown last (the prompt's last
tokens at first) so that sentencepiece keeps the leading space of a word-initial piece.

`StopMatcher` cuts the text at the first stop string: the emitted text excludes it, and
a suffix that could still become a stop string is held back until the next text decides.

`TextStream` chains the two for one row; the text a row shows is exactly the
concatenation of what `push` and `finish` returned.
"""

from __future__ import annotations

from typing import Protocol, Sequence

REPLACEMENT = "\ufffd"
# prompt tokens the first window starts with, at least (sentencepiece's leading space)
_CONTEXT = 5
# how far back the first window may reach to find a prompt token with visible text
_MAX_CONTEXT = 64


class Decoder(Protocol):
    """What text streaming needs of a tokenizer (llmc.frontends.tokenizer.Tokenizer)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        ...


class Detokenizer:
    """Token ids in, stable text deltas out.

    The window (`ids`) always starts with tokens whose text has been shown and holds a
    visible (non-space) character: decoders strip a leading space (sentencepiece strips
    them all), so a window that began with a bare space piece would lose text.
    """

    def __init__(self, tokenizer: Decoder, prompt: Sequence[int] = ()):
        self.tokenizer = tokenizer
        prompt = [int(i) for i in prompt]
        start = max(0, len(prompt) - _CONTEXT)
        while start > max(0, len(prompt) - _MAX_CONTEXT) and \
                not self._decode(prompt[start:]).strip():
            start -= 1
        self.ids = prompt[start:]
        self.read = len(self.ids)  # the first `read` tokens' text has been shown
        self.shown = self._decode(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add a token; the text it completes (may be empty while a character is split)."""
        self.ids.append(int(token))
        return self._emit(final=False)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the end of the output)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        text = self._decode(self.ids)
        if len(text) <= len(self.shown) or (text.endswith(REPLACEMENT) and not final):
            return ""
        delta = text[len(self.shown):]
        # the next window starts at the tokens just shown (they end on a character
        # boundary and give the next piece its leading space) unless they are only space
        newest = self.ids[self.read:]
        newest_text = self._decode(newest)
        if newest_text.strip():
            self.ids, text = newest, newest_text
        self.read, self.shown = len(self.ids), text
        return delta


class StopMatcher:
    """Text deltas in, text deltas out, cut at the first occurrence of any stop string."""

    def __init__(self, stop: Sequence[str] = ()):
        self.stop = [s for s in stop if s]
        self.held = ""
        self.stopped: str | None = None  # the stop string found

    def push(self, text: str) -> str:
        """Add text; the part that can be shown now (none once a stop string was found)."""
        if self.stopped is not None:
            return ""
        buf = self.held + text
        hits = [(buf.find(s), s) for s in self.stop if s in buf]
        if hits:
            at, self.stopped = min(hits)
            self.held = ""
            return buf[:at]
        keep = self._possible_start(buf)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def _possible_start(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if s.startswith(buf[len(buf) - n:]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """The held-back text, once no more text will come."""
        held, self.held = ("" if self.stopped is not None else self.held), ""
        return held


class TextStream:
    """One row's visible text: detokenized, cut at stop strings."""

    def __init__(self, tokenizer: Decoder, prompt: Sequence[int] = (), stop: Sequence[str] = ()):
        self.detok = Detokenizer(tokenizer, prompt)
        self.matcher = StopMatcher(stop)
        self.text = ""

    @property
    def stopped(self) -> bool:
        """Whether a stop string has appeared (the row should end)."""
        return self.matcher.stopped is not None

    def push(self, token: int) -> str:
        """Add a generated token; the text delta to show."""
        delta = self.matcher.push(self.detok.push(token))
        self.text += delta
        return delta

    def finish(self) -> str:
        """End of the row: the text still held back, if the row did not stop on a string."""
        delta = self.matcher.push(self.detok.flush()) if not self.stopped else ""
        delta += self.matcher.flush()
        self.text += delta
        return delta
