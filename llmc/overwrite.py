"""One rule for every command that writes: never over one of its own inputs.

`llmc import DIR -o DIR/model.safetensors` once replaced the checkpoint's weights with IR
text; `llmc run g.llmc -o g.llmc` replaced its source. Each command names what it reads
(files, and the checkpoint directories it reads from) and what it writes; an output that
is an input, lies inside a checkpoint directory being read, or (a directory output that
gets replaced) holds one, is refused unless the user passes `--force`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from llmc.compiler.errors import LlmcError

PathLike = str | os.PathLike


def _resolved(p: PathLike) -> Path:
    return Path(p).expanduser().resolve()


def _same_file(a: Path, b: Path) -> bool:
    """Also true for two names of one file (a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def input_clash(output: PathLike, files: Iterable[PathLike | None] = (),
                dirs: Iterable[PathLike | None] = (), replaces_dir: bool = False) -> str | None:
    """Why writing `output` would damage an input, or None. `files` are the command's
    input files, `dirs` the checkpoint directories it reads; `replaces_dir` says that the
    output is a directory replaced as a whole (an artifact), so it must not hold an input."""
    out = _resolved(output)
    for f in filter(None, files):
        src = _resolved(f)
        if out == src or _same_file(Path(output), Path(f)):
            return f"{output}: is this command's input {f}"
        if replaces_dir and _within(src, out):
            return f"{output}: would replace the directory holding this command's input {f}"
    for d in filter(None, dirs):
        src = _resolved(d)
        if _within(out, src):
            return f"{output}: is inside the checkpoint directory {d} that this command reads"
        if replaces_dir and _within(src, out):
            return f"{output}: would replace the directory holding the checkpoint {d}"
    return None


def refuse_overwriting_inputs(outputs: Iterable[PathLike | None],
                              files: Iterable[PathLike | None] = (),
                              dirs: Iterable[PathLike | None] = (),
                              force: bool = False, replaces_dir: bool = False) -> None:
    """Raise one `LlmcError` line if any output would write over an input (see the module
    doc), before the command does any work; `force` allows it."""
    if force:
        return
    files, dirs = list(files), list(dirs)
    for output in filter(None, outputs):
        why = input_clash(output, files, dirs, replaces_dir)
        if why is not None:
            raise LlmcError(f"{why}; refusing to overwrite it (pass --force to allow)")
