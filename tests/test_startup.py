"""`llmc --help` and `llmc opt` must stay light: no heavy framework is imported on their path."""

import subprocess
import sys

HEAVY = ("torch", "paddle", "onnxruntime", "transformers", "safetensors")

PROBE = """
import sys
{body}
print()
print(",".join(sorted(m for m in {mods!r} if m in sys.modules)))
"""


def loaded(body: str, mods=HEAVY) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(body=body, mods=mods)],
                       capture_output=True, text=True, check=True)
    last = r.stdout.split("\n")[-2]  # the probe's line is the last one printed
    return [m for m in last.split(",") if m]


def test_cli_import_loads_no_framework_nor_numpy():
    assert loaded("import llmc.cli", HEAVY + ("numpy",)) == []


def test_opt_path_loads_no_framework(tmp_path):
    f = tmp_path / "g.llmc"
    f.write_text("graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n  return %y\n}\n")
    body = ("from llmc.cli import main\n"
            f"sys.argv = ['llmc', 'opt', {str(f)!r}, '-p', 'dce,cse,canonicalize', '-q']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n")
    assert loaded(body) == []
