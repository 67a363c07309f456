"""Tiny generated data sets for tests and demos: an SFT copy task a small model learns in a
few dozen steps, and a pretraining jsonl corpus. Words come from the fixture tokenizers'
training text, so they tokenize into few tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world",
         "compiler", "graph", "model", "token")


def write_tiny_sft(path: str | Path, n: int = 32, seed: int = 0, words: int = 3,
                   multi_turn_every: int = 4) -> Path:
    """`n` `{"src", "tgt"}` lines: "Repeat: w1 w2 w3" -> "w1 w2 w3"; every
    `multi_turn_every`-th example has two turns (lists). Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = Path(path)
    lines = []
    for i in range(n):
        turns = 2 if multi_turn_every and i % multi_turn_every == multi_turn_every - 1 else 1
        src, tgt = [], []
        for _ in range(turns):
            picked = " ".join(WORDS[k] for k in rng.integers(0, len(WORDS), words))
            src.append(f"Repeat: {picked}")
            tgt.append(picked)
        row = {"src": src, "tgt": tgt} if turns > 1 else {"src": src[0], "tgt": tgt[0]}
        lines.append(json.dumps(row))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def write_tiny_corpus(path: str | Path, n: int = 64, seed: int = 0, words: int = 12) -> Path:
    """`n` `{"text": ...}` lines of random fixture words. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = Path(path)
    texts = [" ".join(WORDS[k] for k in rng.integers(0, len(WORDS), words)) for _ in range(n)]
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return out
