"""CLI conventions: one meaning per short flag, choices that --help and completion know,
one way to name a model, --json everywhere, shared instrument options, --version."""

from __future__ import annotations

import json
import os
import subprocess
import re
import sys
from pathlib import Path

import pytest
import typer

from clitools import run_cli
from llmc import options
from llmc.cli import app

ROOT = Path(__file__).resolve().parents[1]
LLMC = [sys.executable, "-m", "llmc"]


def commands() -> dict:
    """Every command by name; a sub-app's commands as 'data prepare'."""
    found = {}
    for name, cmd in typer.main.get_command(app).commands.items():
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            found.update({f"{name} {sub}": c for sub, c in subcommands.items()})
        else:
            found[name] = cmd
    return found


def options_of(name: str) -> dict[str, object]:
    """Each option's long name -> its click parameter."""
    return {max(p.opts, key=len): p for p in commands()[name].params if p.opts[0].startswith("-")}


def test_choice_lists_match_the_registries():
    from llmc.frontends import fixtures
    from llmc.passes.pipelines import TARGETS

    assert options.TARGETS == tuple(TARGETS)
    assert options.ARCHES == tuple(fixtures.ARCHES)
    assert options.FORMATS == tuple(fixtures.FORMATS)


def test_runtime_and_provider_choices_match_the_runtimes():
    from typing import get_args

    from llmc import cli_generate, runtimes
    from llmc.runtime.onnx.session import PROVIDERS

    assert get_args(cli_generate.Runtime) == runtimes.RUNTIMES
    assert get_args(cli_generate.Provider) == runtimes.PROVIDERS == tuple(PROVIDERS)


def test_each_short_flag_has_one_meaning():
    meaning: dict[str, set[str]] = {}
    for cmd in commands().values():
        for p in cmd.params:
            longs = [o for o in p.opts if o.startswith("--")]
            for short in (o for o in p.opts if o.startswith("-") and not o.startswith("--")):
                meaning.setdefault(short, set()).update(longs)
    assert meaning["-p"] == {"--passes"}
    assert {k: v for k, v in meaning.items() if len(v) != 1} == {}


@pytest.mark.parametrize("cmd", ["generate", "demo"])
def test_prompt_has_no_short_flag(monkeypatch, capsys, cmd, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, cmd, tmp_path, "-p", "hi")
    assert code == 2 and "No such option: -p" in err and err.count("\n") == 1


@pytest.mark.parametrize("cmd,flag,choices", [
    ("compile", "--target", options.TARGETS), ("passes", "--target", options.TARGETS),
    ("demo", "--target", options.TARGETS), ("demo", "--arch", options.ARCHES),
    ("fixture", "--arch", options.ARCHES), ("fixture", "--format", options.FORMATS),
    ("compile", "--form", options.FORMS), ("import", "--form", options.FORMS),
    ("inspect", "--form", options.FORMS), ("opt", "--emit", options.EMITS),
])
def test_choices_are_listed_by_help_and_refused_when_wrong(monkeypatch, capsys, cmd, flag,
                                                           choices, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, cmd, "--help")
    assert code == 0 and f"{flag} <{'|'.join(choices)}>" in " ".join(out.split())
    positional = [] if cmd in ("passes", "demo") else [tmp_path]
    code, out, err = run_cli(monkeypatch, capsys, cmd, flag, "nope", *positional)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"'nope' is not one of {', '.join(map(repr, choices))}" in err


def test_shell_completion_knows_targets_and_forms():
    def complete(words: str) -> list[str]:
        env = dict(os.environ, _LLMC_COMPLETE="complete_bash", COMP_WORDS=words,
                   COMP_CWORD=str(len(words.split())))
        r = subprocess.run(LLMC, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("llmc compile --target ") == list(options.TARGETS)
    assert complete("llmc inspect --form ") == list(options.FORMS)
    assert "--install-completion" in subprocess.run(LLMC + ["--help"], capture_output=True,
                                                    text=True).stdout


def test_version_matches_the_package_metadata(monkeypatch, capsys):
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(),
                        re.M).group(1)
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out == f"llmc {version}\n"


def test_every_command_has_json():
    """Every command but the interactive chat (a conversation on a terminal)."""
    missing = [name for name in commands() if "--json" not in options_of(name)]
    assert missing == ["chat"]


def test_instrument_options_are_the_same_on_opt_and_compile():
    flags = ("--print-ir-before", "--print-ir-after", "--print-ir-after-all", "--dump-dir",
             "--disable-pass", "--verify-each")
    opt, comp = options_of("opt"), options_of("compile")
    for flag in flags:
        assert (opt[flag].opts, opt[flag].help) == (comp[flag].opts, comp[flag].help), flag


def test_opt_instruments_reach_the_pass_manager(monkeypatch, capsys, tmp_path):
    f = tmp_path / "g.llmc"
    f.write_text("graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n  %z = neg(%x) : f32[2]\n"
                 "  return %y\n}\n")
    code, out, err = run_cli(monkeypatch, capsys, "opt", f, "-p", "cse,dce", "--json",
                             "--disable-pass", "dce", "--dump-dir", tmp_path / "d")
    assert code == 0, err
    passes = {p["name"]: p["skipped"] for p in json.loads(out)["passes"]}
    assert passes == {"cse": False, "dce": True}
    assert sorted(p.name for p in (tmp_path / "d").iterdir())[0] == "000_input.llmc"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from llmc.frontends.fixtures import write_fixture

    # a non-ASCII directory name: --json must keep it readable
    return write_fixture(tmp_path_factory.mktemp("ck") / "模型", "llama", "hf-numpy")


def test_json_keeps_non_ascii_readable(monkeypatch, capsys, ckpt):
    code, out, err = run_cli(monkeypatch, capsys, "inspect", ckpt, "--json")
    assert code == 0, err
    assert "模型" in out and "\\u" not in out
    assert json.loads(out)["files"][0].startswith(str(ckpt))


@pytest.mark.parametrize("cmd", ["import", "inspect", "compile"])
def test_model_dir_or_config_the_same_way(monkeypatch, capsys, cmd, ckpt, tmp_path):
    extra = {"import": ["-o", tmp_path / "g.llmc"], "inspect": [],
             "compile": ["-t", "cpu", "-o", tmp_path / "art"]}[cmd]
    config = ckpt / "config.json"
    cases = [([ckpt, "--config", config], "give a MODEL_DIR or --config FILE (exactly one)"),
             ([], "give a MODEL_DIR or --config FILE (exactly one)"),
             ([config], f"use --config {config} for a config-only graph"),
             (["--config", ckpt], "is a directory; give the config .json file")]
    for args, needle in cases:
        code, _, err = run_cli(monkeypatch, capsys, cmd, *args, *extra)
        assert code == 2 and needle in err and err.count("\n") == 1, (args, err)
    assert list(tmp_path.iterdir()) == []
    for source in ([ckpt], ["--config", config]):
        code, out, err = run_cli(monkeypatch, capsys, cmd, *source, *extra, "--json")
        assert code == 0, err
        assert json.loads(out)  # a report either way


def test_compile_without_output_is_an_error(monkeypatch, capsys, ckpt, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "compile", ckpt, "-t", "cpu")
    assert code == 2 and "Missing option '-o' / '--output'" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_generate_reports_its_timings(monkeypatch, capsys, ckpt, tmp_path):
    art = tmp_path / "art"
    assert run_cli(monkeypatch, capsys, "compile", ckpt, "-t", "ascend910b", "-o", art)[0] == 0
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, "--ids", "1,2,3", "-n", "4")
    assert code == 0, err
    n = len(out.strip().split(","))
    assert err.startswith("reference: prefill 3 tok in ") and err.count("\n") == 1
    assert f"decode {n - 1} tok in " in err and err.rstrip().endswith("tok/s)")
    assert "first token " in err
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, "--ids", "1,2,3", "-n", "4",
                             "--json")
    t = json.loads(out)["timings"]
    assert t["prefill_tokens"] == 3 and t["decode_tokens"] == n - 1
    assert t["decode_tok_s"] == pytest.approx(t["decode_tokens"] / t["decode_s"], rel=1e-2)
    assert 0 < t["ttft_s"] <= t["prefill_s"] + 1e-6


def _compile_stderr(ckpt, out: Path, tty: bool) -> str:
    cmd = LLMC + ["compile", str(ckpt), "-t", "cpu", "-o", str(out)]
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    master, slave = os.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="100")
    r = subprocess.run(cmd, stderr=slave, stdout=subprocess.PIPE, env=env)
    os.close(slave)
    data = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the pty's other end is closed
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    assert r.returncode == 0
    return data.decode(errors="replace")


def test_compile_shows_progress_only_on_a_terminal(ckpt, tmp_path):
    on_tty = _compile_stderr(ckpt, tmp_path / "a", tty=True)
    assert "checking weights" in on_tty and "100%" in on_tty
    assert on_tty.index("100%") < on_tty.index("--- Running IR pass")
    piped = _compile_stderr(ckpt, tmp_path / "b", tty=False)
    assert "checking weights" not in piped and "--- Running IR pass" in piped


def test_compile_progress_counts_every_tensor(ckpt):
    from llmc.compile import compile_model

    calls = []
    c = compile_model(ckpt, "cpu", progress=lambda done, total: calls.append((done, total)))
    total = len(c.manifest["tensors"])
    assert calls == [(i, total) for i in range(1, total + 1)]
