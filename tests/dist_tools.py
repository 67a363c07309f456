"""Shared by the launched tests (tests/test_dist_*.py): run a script on N ranks through
paddle.distributed.launch, and the relative difference the comparisons use."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from llmc.distributed import launch_command


def launch(script: Path, out: Path, nproc: int = 2, timeout: int = 300) -> None:
    """Run `script OUT` on nproc ranks; fail with the ranks' logs if it fails."""
    cmd = launch_command(nproc, [sys.executable, "-u", str(script), str(out)], out / "log")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    logs = "".join(p.read_text(errors="replace")[-3000:]
                   for p in sorted((out / "log").glob("workerlog.*")))
    assert done.returncode == 0, logs


def rel(a, b) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
