"""Directories that appear whole or not at all: build beside the target, then swap it in.

Every writer of a directory (artifacts, value dumps, safetensors checkpoints, adapters,
merges) goes through `replace_dir`, so a failure or an interruption leaves the previous
directory as it was and no half-written one under the final name. The temporary directory
is named `.OUT.tmp-<pid>-<hex>`: the next write of OUT removes those whose writer is gone
(a SIGKILL leaves them behind)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable

from .errors import LlmcError


def replace_dir(out: str | Path, fill: Callable[[Path], object], what: str = "it") -> Path:
    """Build a directory with `fill(tmp)` beside `out` (mode from the umask), then put it at
    `out`; an existing `out` is swapped out atomically where the filesystem allows, else
    moved aside and restored if the second rename fails. OS errors become one LlmcError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LlmcError(f"{out}: exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_leftovers(out)
        tmp = _temp_dir(out)
    except OSError as e:
        raise LlmcError(f"{out}: cannot create {what} ({e.strerror or e})") from None
    try:
        fill(tmp)
        _swap(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LlmcError(f"{out}: cannot write {what} ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _temp_dir(out: Path) -> Path:
    """A new hidden directory beside `out`; `mkdir` follows the umask (mkdtemp's is 0700)."""
    while True:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _swap(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    if exchange(tmp, out):  # tmp now holds the old directory
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the old directory back
        raise
    shutil.rmtree(old, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where
    the platform or filesystem cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_stale_leftovers(out: str | Path) -> list[Path]:
    """Remove the temporary directories an earlier write of `out` left when it was killed:
    only ours (same user), only of this OUT, only those whose writing process is gone."""
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)(?:-[0-9a-f]+)?")
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        if entry.stat().st_uid != os.getuid() or not _process_is_gone(int(m.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _process_is_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive but not ours (EPERM), or unknown: keep its files
        return False
    return False
