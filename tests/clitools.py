"""Running the `llmc` CLI in-process from tests."""

import sys

import pytest

from llmc.cli import main


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `llmc ARGS...` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["llmc", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err
