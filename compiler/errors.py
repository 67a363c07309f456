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
            caret = " " * max((self.column or 1) - 1, 0) + "^"
            out += f"\n  {self.source_line}\n  {caret}"
        return out


class VerifyError(LlmcError):
    """The graph breaks an IR invariant; the message names the op and value."""


class PassError(LlmcError):
    """A pass failed; the message names the pass and the passes already run."""
