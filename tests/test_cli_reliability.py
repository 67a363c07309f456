"""What a careless or hostile input still got through, each now a clean CLI error:
exit code 2, one located line, no traceback, nothing overwritten, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clitools import run_cli

GRAPH = "graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n  return %y\n}\n"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (hidden ones too) with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def expect_refusal(monkeypatch, capsys, root: Path, *args, needles=()) -> str:
    """Run llmc ARGS, which must fail cleanly and leave `root` exactly as it was."""
    before = snapshot(root)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)
    assert snapshot(root) == before
    return err


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from llmc.frontends.fixtures import write_fixture

    return write_fixture(tmp_path_factory.mktemp("ck") / "m", "llama_gqa", "hf-numpy")


@pytest.fixture
def model(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "m")


# ---- outputs that would destroy inputs ----------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json",
                                  "new.llmc"])
def test_import_does_not_write_into_its_checkpoint(monkeypatch, capsys, model, tmp_path, name):
    expect_refusal(monkeypatch, capsys, tmp_path, "import", model, "-o", model / name,
                   needles=(f"{model / name}: is inside the checkpoint directory {model}",
                            "--force"))


def test_import_force_writes_into_the_checkpoint(monkeypatch, capsys, model):
    weights = (model / "model.safetensors").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "import", model, "-o", model / "g.llmc", "--force")
    assert code == 0, err
    assert (model / "g.llmc").read_text().startswith("graph @")
    assert (model / "model.safetensors").read_bytes() == weights


def test_import_from_config_does_not_replace_the_config(monkeypatch, capsys, model, tmp_path):
    cfg = model / "config.json"
    expect_refusal(monkeypatch, capsys, tmp_path, "import", "--config", cfg, "-o", cfg,
                   needles=(f"{cfg}: is this command's input {cfg}",))


@pytest.fixture
def graph_files(tmp_path):
    g = tmp_path / "g.llmc"
    g.write_text(GRAPH)
    np.savez(tmp_path / "i.npz", x=np.array([1.0, 2.0], np.float32))
    np.savez(tmp_path / "w.npz")
    return tmp_path


@pytest.mark.parametrize("target", ["g.llmc", "i.npz", "w.npz"])
def test_run_does_not_write_over_its_inputs(monkeypatch, capsys, graph_files, target):
    d = graph_files
    expect_refusal(monkeypatch, capsys, d, "run", d / "g.llmc", "--inputs", d / "i.npz",
                   "--weights", d / "w.npz", "-o", d / target,
                   needles=(f"{d / target}: is this command's input",))


def test_opt_does_not_write_over_its_input_by_any_name(monkeypatch, capsys, graph_files):
    d = graph_files
    os.link(d / "g.llmc", d / "hard.llmc")
    os.symlink("g.llmc", d / "soft.llmc")
    for alias in ("g.llmc", "hard.llmc", "soft.llmc", "./sub/../g.llmc"):
        (d / "sub").mkdir(exist_ok=True)
        expect_refusal(monkeypatch, capsys, d, "opt", d / "g.llmc", "-p", "dce", "-o", d / alias,
                       needles=("is this command's input", "--force"))
    code, _, err = run_cli(monkeypatch, capsys, "opt", d / "g.llmc", "-p", "dce", "-o",
                           d / "g.llmc", "--force", "-q")
    assert code == 0, err


def test_compile_does_not_write_into_or_over_its_checkpoint(monkeypatch, capsys, model,
                                                            tmp_path):
    expect_refusal(monkeypatch, capsys, tmp_path, "compile", model, "-t", "cpu",
                   "-o", model / "art", needles=("is inside the checkpoint directory",))
    expect_refusal(monkeypatch, capsys, tmp_path, "compile", model, "-t", "cpu",
                   "-o", tmp_path, needles=("would replace the directory holding the checkpoint",))
    expect_refusal(monkeypatch, capsys, tmp_path, "compile", model, "-t", "cpu",
                   "-o", tmp_path / "art", "--dump-dir", model / "dumps",
                   needles=(f"{model / 'dumps'}: is inside the checkpoint directory",))
    cfg = model / "config.json"
    expect_refusal(monkeypatch, capsys, tmp_path, "compile", "--config", cfg, "-t", "cpu",
                   "-o", cfg, needles=("is this command's input",))


# ---- tampered artifacts ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(pristine, tmp_path_factory):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model

    base = tmp_path_factory.mktemp("arts")
    return {t: write_artifact(compile_model(pristine, t), base / t) for t in ("ascend910b", "cpu")}


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(fn(doc)))


def _drop(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def _first_tensor(fn):
    def edit(d):
        name = next(iter(d["tensors"]))
        d["tensors"][name] = fn(d["tensors"][name])
        return d
    return edit


def _set(**kw):
    return lambda d: dict(d, **kw)


def _set_config(**kw):
    return lambda d: dict(d, config=dict(d["config"], **kw))


TAMPERED = [
    ("weights.json", _drop("tensors"), "field 'tensors' is missing"),
    ("weights.json", lambda d: [d], "the top level must be a JSON object, not a list"),
    ("weights.json", _set(model_dir=5), "field 'model_dir' must be a string, not an integer"),
    ("weights.json", _set(tensors=[]), "field 'tensors' must be an object, not a list"),
    ("weights.json", _set(backed="yes"), "field 'backed' must be true or false"),
    ("weights.json", _first_tensor(lambda t: dict(t, shape="64")),
     "field 'tensors.model.embed_tokens.weight.shape' must be a list of integers"),
    ("weights.json", _first_tensor(lambda t: 3),
     "field 'tensors.model.embed_tokens.weight' must be a JSON object"),
    ("weights.json", lambda d: dict(d, tensors=dict(list(d["tensors"].items())[1:])),
     "field 'tensors' lacks 'model.embed_tokens.weight', a parameter of model.llmc"),
    ("report.json", lambda d: [d], "the top level must be a JSON object, not a list"),
    ("report.json", _drop("config"), "field 'config' is missing"),
    ("report.json", _set(form="training"), "field 'form' must be one of full, inference"),
    ("report.json", _set(target=["cpu"]), "field 'target' must be a string, not a list"),
    ("report.json", _set_config(eos_token_id="</s>"),
     "field 'config.eos_token_id' must be an integer or a list of integers, not a string"),
    ("report.json", _set_config(eos_token_id=[2, "x"]),
     "field 'config.eos_token_id' must be an integer or a list of integers, not a list"),
    ("report.json", _set_config(vocab_size=-3), "field 'config.vocab_size' must be positive"),
    ("report.json", _set_config(max_position_embeddings=1.5),
     "field 'config.max_position_embeddings' must be an integer, not a number"),
]


@pytest.mark.parametrize("target", ["ascend910b", "cpu"])
@pytest.mark.parametrize("name,edit,needle", TAMPERED,
                         ids=[f"{f}:{n.split(chr(39))[1] if chr(39) in n else n}"
                              for f, _, n in TAMPERED])
def test_a_tampered_artifact_is_one_located_line(monkeypatch, capsys, compiled, tmp_path,
                                                 target, name, edit, needle):
    art = shutil.copytree(compiled[target], tmp_path / "art")
    edit_json(art / name, edit)
    expect_refusal(monkeypatch, capsys, tmp_path, "generate", art, "--ids", "1,2", "-n", "2",
                   needles=(f"{art / name}: {needle}",))


@pytest.mark.parametrize("name,text,needle", [
    ("report.json", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    ("weights.json", "{not json", "not a readable llmc artifact"),
    ("report.json", b"\xff\xfe{}", "not a readable llmc artifact"),
])
def test_an_unreadable_artifact_file_is_one_located_line(monkeypatch, capsys, compiled, tmp_path,
                                                         name, text, needle):
    art = shutil.copytree(compiled["cpu"], tmp_path / "art")
    write = (art / name).write_bytes if isinstance(text, bytes) else (art / name).write_text
    write(text)
    expect_refusal(monkeypatch, capsys, tmp_path, "generate", art, "--ids", "1",
                   needles=(f"{art / name}: {needle}",))


def test_deeply_nested_ir_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path):
    deep = tmp_path / "deep.llmc"
    deep.write_text("graph @g(%x: f32[2]) {\n  %y = neg(%x) {a = " + "[" * 5000 + "]" * 5000
                    + "} : f32[2]\n  return %y\n}\n")
    before = snapshot(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "opt", deep)
    # an IR syntax error is the compiler convention: `file:line:col: error: ...`, the
    # offending line (cut around the caret), the caret
    first, line, caret = err.splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert first.startswith(f"{deep}:2:") and ": error: " in first and len(line) < 200, err
    assert caret.strip() == "^" and snapshot(tmp_path) == before
