"""Compiled artifacts on disk: written atomically, read back checked against their schema.

An artifact directory holds `model.llmc` (the lowered IR), `pass_log.txt`, `report.json`
and `weights.json` (a manifest naming each parameter's checkpoint file, dtype and shape:
weights are never copied). It is written to a hidden temporary directory next to OUT,
`.OUT.tmp-<pid>-<random>`, and swapped into place, so OUT is either the old artifact or
the new one. A writer killed mid-way leaves its temporary directory behind; the next write
of the same OUT removes those whose process is gone.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph
from llmc.compiler.passmanager import PassRecord
from llmc.compiler.text import parse, print_graph

from . import schema as S

ARTIFACT_FILES = ("model.llmc", "pass_log.txt", "report.json", "weights.json")

REPORT_SCHEMA = {
    "target": S.Field(S.is_str),
    "form": S.Field(S.one_of("full", "inference", "cache")),
    "config": S.Field(S.is_object),
}
CONFIG_SCHEMA = {  # the fields of report.json's config that generation reads
    "vocab_size": S.Field(S.is_positive_int),
    "max_position_embeddings": S.Field(S.is_positive_int, required=False),
    "eos_token_id": S.Field(S.is_int_or_int_list, required=False),
}
MANIFEST_SCHEMA = {
    "model_dir": S.Field(S.is_str),
    "backed": S.Field(S.is_bool),
    "format": S.Field(S.is_str, required=False),
    "tensors": S.Field(S.is_object),
}
TENSOR_SCHEMA = {
    "shape": S.Field(S.is_int_list),
    "stored_shape": S.Field(S.is_int_list, required=False),
    "file": S.Field(S.is_str, required=False),
    "dtype": S.Field(S.is_str, required=False),
}


@dataclass
class Compiled:
    """What a compile produced, ready to be written as an artifact."""

    graph: Graph
    target: str
    form: str
    records: list[PassRecord]
    report: dict
    manifest: dict
    log: list[str]


@dataclass
class Artifact:
    """A compiled artifact read back: graph, report and the weights its manifest names."""

    path: Path
    graph: Graph
    report: dict
    manifest: dict

    def weights(self):
        """The checkpoint's tensors (memory-mapped), checked against the manifest."""
        from llmc.frontends.weights import WeightStore

        if not self.manifest.get("backed"):
            raise LlmcError(
                f"{self.path}: compiled from a config alone; there are no weights to run"
            )
        store = WeightStore(self.manifest["model_dir"])
        missing = [n for n in self.manifest["tensors"] if n not in store]
        if missing:
            raise LlmcError(
                f"{self.path}: checkpoint {self.manifest['model_dir']} "
                f"lacks {', '.join(missing[:3])}"
            )
        return store


# ---- writing ---------------------------------------------------------------------------


def check_output(out: str | Path) -> None:
    """Refuse an OUT that is not ours to replace: a file, or a non-artifact directory."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise LlmcError(f"{out}: exists and is not an llmc artifact directory")
        if not (out / "model.llmc").exists() and any(out.iterdir()):
            raise LlmcError(f"{out}: exists and is not an llmc artifact; refusing to replace it")


def _leftover_pattern(out: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)(?:-[0-9a-f]+)?")


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


def remove_stale_leftovers(out: str | Path) -> list[Path]:
    """Remove the temporary directories an earlier write of `out` left when it was killed:
    only ours (same user), only of this OUT, only those whose writing process is gone."""
    out = Path(out)
    pattern, removed = _leftover_pattern(out), []
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


def _make_temp_dir(out: Path) -> Path:
    """A new hidden directory beside `out`, with the mode the umask gives (mkdtemp's is 0700)."""
    while True:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where
    the platform or filesystem cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Put `tmp` at `out`; an existing `out` is swapped out atomically where the
    filesystem allows, else moved aside and restored if the second rename fails."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):  # tmp now holds the old artifact
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the old artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_files(c: Compiled, tmp: Path) -> None:
    (tmp / "model.llmc").write_text(print_graph(c.graph))
    (tmp / "pass_log.txt").write_text("\n".join(c.log) + "\n")
    (tmp / "report.json").write_text(json.dumps(c.report, indent=2, ensure_ascii=False) + "\n")
    (tmp / "weights.json").write_text(json.dumps(c.manifest, indent=2, ensure_ascii=False) + "\n")


def write_artifact(c: Compiled, out: str | Path) -> Path:
    """Write the artifact directory atomically: OUT is the old artifact or the new one."""
    out = Path(out)
    check_output(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_leftovers(out)
        tmp = _make_temp_dir(out)
    except OSError as e:
        raise LlmcError(f"{out}: cannot create the artifact directory ({e.strerror or e})") from None
    try:
        _write_files(c, tmp)
        _swap_into_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LlmcError(f"{out}: cannot write the artifact ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- reading ---------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LlmcError(f"{path}: not a readable llmc artifact ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlmcError(f"{path}: not a readable llmc artifact ({e})") from None
    except RecursionError:
        raise LlmcError(f"{path}: JSON nested too deeply") from None


def _check_manifest(manifest: dict, path: Path, graph: Graph) -> None:
    S.validate(manifest, path, MANIFEST_SCHEMA)
    S.validate_each(manifest["tensors"], path, TENSOR_SCHEMA, "tensors")
    missing = [n for n in graph.params if n not in manifest["tensors"]]
    if missing:
        raise LlmcError(f"{path}: field 'tensors' lacks '{missing[0]}', a parameter of "
                        f"model.llmc" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                         else ""))


def load_artifact(path: str | Path) -> Artifact:
    """Read an artifact directory written by `write_artifact`, each file checked."""
    p = Path(path)
    if not p.is_dir():
        raise LlmcError(f"{p}: not a readable llmc artifact (no such directory)")
    report = _read_json(p / "report.json")
    S.validate(report, p / "report.json", REPORT_SCHEMA)
    S.validate(report["config"], p / "report.json", CONFIG_SCHEMA, "config.")
    manifest = _read_json(p / "weights.json")
    try:
        text = (p / "model.llmc").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LlmcError(f"{p / 'model.llmc'}: not a readable llmc artifact ({e})") from None
    graph = parse(text, str(p / "model.llmc"))
    _check_manifest(manifest, p / "weights.json", graph)
    return Artifact(p, graph, report, manifest)
