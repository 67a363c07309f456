"""The loss-curve PNG `llmc train` writes next to metrics.jsonl (matplotlib, an optional
extra: `pip install 'llmc[plot]'`). Rendered with the Agg backend (no display needed) into a
temporary file beside the target and renamed over it, so a reader never sees half a PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

SIZE_INCHES = (6, 4)
DPI = 100  # the PNG is SIZE_INCHES * DPI pixels: 600 x 400
MISSING = "loss curve: skipped (matplotlib is not installed: pip install 'llmc[plot]')"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_loss(metrics: Path, png: Path) -> str | None:
    """Draw the training loss of every step in `metrics` (metrics.jsonl) into `png`,
    atomically; returns the PNG's path, or None (and writes nothing) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    losses = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=SIZE_INCHES)
    try:
        ax.plot([r["step"] for r in rows], losses, marker="." if len(rows) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log" if losses and all(math.isfinite(x) and x > 0 for x in losses)
                      else "linear")
        ax.grid(True, alpha=0.3)
        tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")
        try:
            fig.savefig(tmp, dpi=DPI, format="png")
            os.replace(tmp, png)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return str(png)
