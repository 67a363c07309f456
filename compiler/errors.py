"""User-facing errors. The CLI prints `str(err)` and exits 2, never a traceback."""

from __future__ import annotations


class LlmcError(Exception):
    """An error caused by user input (a file, a flag, a config): printed without traceback."""


class IRSyntaxError(LlmcError):
    """A located error in IR text: `file:line:col: error: msg`, the line, and a caret."""

    def __init__(self, msg: str, filename: str = "<input>", text: str | None = None,
                 line: int | None = None, column: int | None = None):
        self.msg, self.filename, self.line, self.column = msg, filename, line, column
        self.source_line = None
        if text is not None and line:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                self.source_line = lines[line - 1]
        super().__init__(self.format())

    def format(self) -> str:
        loc = self.filename
        if self.line:
            loc += f":{self.line}"
            if self.column:
                loc += f":{self.column}"
        out = f"{loc}: error: {self.msg}"
        if self.source_line is not None:
            excerpt, at = _excerpt(self.source_line, max((self.column or 1) - 1, 0))
            out += f"\n  {excerpt}\n  {' ' * at}^"
        return out


def _excerpt(line: str, at: int, width: int = 100) -> tuple[str, int]:
    """At most `width` characters of `line` around offset `at` (with '...' where cut) and
    the caret's offset in them, so a huge line does not flood the terminal."""
    if len(line) <= width:
        return line, at
    start = min(max(at - width // 2, 0), len(line) - width)
    head = "..." if start > 0 else ""
    tail = "..." if start + width < len(line) else ""
    return head + line[start:start + width] + tail, at - start + len(head)


class VerifyError(LlmcError):
    """The graph breaks an IR invariant; the message names the op and value."""


class PassError(LlmcError):
    """A pass failed; the message names the pass and the passes already run."""
