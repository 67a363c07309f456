"""Runs every FileCheck golden file under tests/filecheck through lit."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent / "filecheck"
FILES = sorted(p for p in ROOT.rglob("*.llmc") if "Output" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_filecheck(path):
    r = subprocess.run([sys.executable, "-c", "from lit.main import main; main()", "-q", "-v", str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


def test_every_golden_file_has_a_run_line():
    for p in FILES:
        first = p.read_text().splitlines()[0]
        assert first.startswith("// RUN: llmc opt %s") and "filecheck %s" in first, p


def test_every_golden_case_checks_the_pass_log():
    """A second RUN line pipes the pass log (2>&1) into the LOG checks, and every case
    states its match count: a wrong expected-count formula fails here."""
    for p in FILES:
        text = p.read_text()
        runs = [ln for ln in text.splitlines() if ln.startswith("// RUN:")]
        assert len(runs) == 2 and "2>&1 | filecheck %s --check-prefix=LOG" in runs[1], p
        for case in text.split("// -----\n"):
            logs = [ln for ln in case.splitlines() if ln.startswith("// LOG")]
            assert any(" matched " in ln for ln in logs), (p, case[:200])
            assert any("WARNING" in ln for ln in logs), (p, case[:200])
