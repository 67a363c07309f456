"""Compiled artifacts on disk: written atomically, read back checked against their schema.

An artifact directory holds `model.llmc` (the lowered IR), `pass_log.txt`, `report.json`
and `weights.json` (a manifest naming each parameter's checkpoint file, dtype and shape:
weights are never copied). It is written to a hidden temporary directory next to OUT,
`.OUT.tmp-<pid>-<random>`, and swapped into place, so OUT is either the old artifact or
the new one. A writer killed mid-way leaves its temporary directory behind; the next write
of the same OUT removes those whose process is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmc.compiler.atomic import replace_dir
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


def _write_files(c: Compiled, tmp: Path) -> None:
    (tmp / "model.llmc").write_text(print_graph(c.graph))
    (tmp / "pass_log.txt").write_text("\n".join(c.log) + "\n")
    (tmp / "report.json").write_text(json.dumps(c.report, indent=2, ensure_ascii=False) + "\n")
    (tmp / "weights.json").write_text(json.dumps(c.manifest, indent=2, ensure_ascii=False) + "\n")


def write_artifact(c: Compiled, out: str | Path) -> Path:
    """Write the artifact directory atomically: OUT is the old artifact or the new one."""
    check_output(out)
    return replace_dir(out, lambda tmp: _write_files(c, tmp), "the artifact")


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
