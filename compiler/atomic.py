"""Directories that appear whole or not at all: build beside the target, then rename.

Every writer of a directory (value dumps, safetensors checkpoints, adapters, merges) goes
through `replace_dir`, so a failure or an interruption leaves the previous directory as it
was and no half-written one under the final name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import LlmcError


def replace_dir(out: str | Path, fill: Callable[[Path], object], what: str = "it") -> Path:
    """Build a directory with `fill(tmp)` beside `out` (mode from the umask, not mkdtemp's
    0700), then swap it into place; an existing `out` is removed only once the new one is
    in place, and restored if the swap fails. OS errors become one LlmcError line."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LlmcError(f"{out}: exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise LlmcError(f"{out}: cannot create {what} ({e.strerror or e})") from None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        fill(tmp)
        _swap(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LlmcError(f"{out}: cannot write {what} ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, old / "previous")
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old / "previous", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    """The process umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
