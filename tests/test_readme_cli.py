"""The README's command lines agree with --help: every flag a README `llmc CMD ...` line (or
its indented continuation) shows is an option of CMD, and the Generation section names
every option of generate and chat."""

import re
from pathlib import Path

import typer

from llmc.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


ROOT_COMMAND = typer.main.get_command(app)
GROUPS = {n for n, c in ROOT_COMMAND.commands.items() if hasattr(c, "commands")}


def options(cmd: str) -> set[str]:
    command = ROOT_COMMAND
    for word in cmd.split():  # 'data prepare': a sub-app's command
        command = command.commands[word]
    return {o for p in command.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]
            if o.startswith("--")} | {"--help"}


def readme_commands() -> list[tuple[str, str]]:
    """(command, its text with continuation lines) for each `llmc CMD` line in code blocks."""
    found, blocks = [], README.split("```")[1::2]
    for block in blocks:
        for line in block.splitlines():
            text = line.split("#")[0]
            m = re.match(r"llmc ([a-z]+)\b(?: ([a-z]+)\b)?", text)
            if m:
                sub = f" {m.group(2)}" if m.group(1) in GROUPS and m.group(2) else ""
                found.append([m.group(1) + sub, text])
            elif line.startswith("    ") and found:
                found[-1][1] += " " + text
    return [tuple(f) for f in found]


def test_readme_flags_exist_in_help():
    cmds = readme_commands()
    assert {"generate", "chat", "export", "compile", "demo"} - {c for c, _ in cmds} <= {"demo"}
    for cmd, text in cmds:
        unknown = set(FLAG.findall(text)) - options(cmd)
        assert not unknown, f"README `llmc {cmd}` shows {sorted(unknown)}, not in its --help"


def test_generation_section_names_every_generate_and_chat_option():
    section = README.split("## Generation", 1)[1].split("\n## ", 1)[0]
    for cmd in ("generate", "chat"):
        missing = options(cmd) - set(FLAG.findall(section)) - {"--help"}
        assert not missing, f"README's Generation section lacks {cmd} {sorted(missing)}"
