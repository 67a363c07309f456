"""`llmc eval`'s Python API: perplexity of texts and C-Eval multiple-choice accuracy.

    model = EvalModel.from_dir("ckpt/", adapter="lora/")      # reference interpreter
    perplexity(model, texts, window=512, stride=256)           # -> loss, perplexity, tokens
    ceval(model, "ceval/val/", "results/")                     # -> writes results/summary.json

C-Eval layout: one CSV per subject, `{subject}_{dev,val,test}.csv` (or `{subject}.csv`)
with the header `id,question,A,B,C,D,answer`. Each question becomes the prompt of the
Chinese-LLaMA-Alpaca-2 evaluation (optionally after `few_shot` solved questions from the
subject's dev file) and the answer is the letter whose token the model rates highest
after it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llmc.compiler.errors import LlmcError
from llmc.compiler.passmanager import write_atomic
from llmc.frontends.llama import build_full
from llmc.frontends.loader import open_checkpoint
from llmc.frontends.tokenizer import load_tokenizer
from llmc.lora import lora_graph
from llmc.runtime.evaluate import LogitsFn, NllSum, pick_choice, sequence_nll
from llmc.runtime.generate import full_logits

LETTERS = "ABCD"
COLUMNS = ["id", "question", "A", "B", "C", "D", "answer"]
SPLITS = ("val", "dev", "test")


@dataclass
class EvalModel:
    """A tokenizer and a logits function over token ids [1, n]."""

    tokenizer: Any
    logits: LogitsFn

    @classmethod
    def from_dir(cls, model_dir: str | Path, adapter: str | Path | None = None) -> "EvalModel":
        """The checkpoint's full-form graph on the reference interpreter (with a LoRA adapter
        applied when given)."""
        ckpt = open_checkpoint(model_dir)
        if adapter is not None:
            graph, weights = lora_graph(ckpt, adapter)
        else:
            graph, weights = build_full(ckpt.config, ckpt.naming), ckpt.weights
        return cls(load_tokenizer(model_dir), lambda ids: full_logits(graph, weights, ids))


@dataclass
class PerplexityResult:
    """Mean NLL per scored token, its exp, and how many tokens, texts and windows."""

    loss: float
    perplexity: float
    tokens: int
    texts: int
    windows: int


def perplexity(model: EvalModel, texts: Sequence[str], window: int, stride: int
               ) -> PerplexityResult:
    """Perplexity over all tokens of `texts` (each tokenized with the model's special
    tokens), long texts in strided windows (runtime/evaluate.py)."""
    total = NllSum()
    for text in texts:
        total.add(sequence_nll(model.logits, model.tokenizer.encode(text), window, stride))
    return PerplexityResult(total.loss, total.perplexity, total.tokens, len(texts), total.windows)


# ---- C-Eval -------------------------------------------------------------------------
def read_ceval_csv(path: Path) -> list[dict[str, str]]:
    """The rows of one subject file; the header must be C-Eval's."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or [c.strip() for c in reader.fieldnames] != COLUMNS:
                raise LlmcError(f"{path}: header must be {','.join(COLUMNS)}, got "
                                f"{','.join(reader.fieldnames or [])}")
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LlmcError(f"{path}: cannot read: {e}") from None
    for i, r in enumerate(rows, 2):
        if r["answer"] not in tuple(LETTERS):
            raise LlmcError(f"{path}: line {i}: field 'answer' must be one of A/B/C/D, "
                            f"got {r['answer']!r}")
    return rows


def subject_files(ceval_dir: str | Path, split: str = "val") -> dict[str, Path]:
    """{subject: CSV} of one split (`{subject}_{split}.csv`, else plain `{subject}.csv`)."""
    d = Path(ceval_dir)
    if not d.is_dir():
        raise LlmcError(f"{d}: not a directory of C-Eval CSV files")
    files = {p.name[: -len(f"_{split}.csv")]: p for p in sorted(d.glob(f"*_{split}.csv"))}
    if not files:
        files = {p.stem: p for p in sorted(d.glob("*.csv"))
                 if not p.stem.endswith(tuple(f"_{s}" for s in SPLITS))}
    if not files:
        raise LlmcError(f"{d}: no C-Eval CSV files (*_{split}.csv or SUBJECT.csv)")
    return files


def format_question(row: dict[str, str], with_answer: bool) -> str:
    text = row["question"] + "".join(f"\n{c}. {row[c]}" for c in LETTERS) + "\n答案："
    return text + (f"{row['answer']}\n\n" if with_answer else "")


def build_prompt(subject: str, row: dict[str, str], shots: Sequence[dict[str, str]]) -> str:
    """The Chinese-LLaMA-Alpaca-2 C-Eval prompt for one question."""
    head = f"以下是中国关于{subject.replace('_', ' ')}考试的单项选择题，请选出其中的正确答案。\n\n"
    return head + "".join(format_question(s, True) for s in shots) + format_question(row, False)


def choice_token_ids(tokenizer) -> list[int]:
    """The token of each letter as it follows the prompt's '：' (distinct, or an error)."""
    ids = [tokenizer.encode("：" + c, add_special_tokens=False)[-1] for c in LETTERS]
    if len(set(ids)) != len(ids):
        raise LlmcError(f"ceval: the tokenizer does not give A/B/C/D distinct tokens after '：' "
                        f"(got ids {ids})")
    return ids


def _shots(files_dir: Path, subject: str, few_shot: int) -> list[dict[str, str]]:
    if few_shot == 0:
        return []
    dev = files_dir / f"{subject}_dev.csv"
    if not dev.is_file():
        raise LlmcError(f"{dev}: needed for few_shot={few_shot} (solved example questions)")
    return read_ceval_csv(dev)[:few_shot]


def score_subject(model: EvalModel, subject: str, rows: list[dict[str, str]],
                  shots: list[dict[str, str]], choice_ids: list[int]) -> dict:
    """{correct, total, accuracy, predictions {id: letter}} of one subject."""
    predictions = {}
    for row in rows:
        prompt = model.tokenizer.encode(build_prompt(subject, row, shots))
        predictions[row["id"]] = LETTERS[pick_choice(model.logits, prompt, choice_ids)]
    correct = sum(predictions[r["id"]] == r["answer"] for r in rows)
    return {"correct": correct, "total": len(rows),
            "accuracy": correct / len(rows) if rows else 0.0, "predictions": predictions}


def ceval(model: EvalModel, ceval_dir: str | Path, out_dir: str | Path, split: str = "val",
          few_shot: int = 0) -> dict:
    """Accuracy per subject and overall ("All": every question counted once); writes
    `summary.json` (scores) and `predictions.json` (the chosen letter per question id)."""
    files = subject_files(ceval_dir, split)
    choice_ids = choice_token_ids(model.tokenizer)
    summary, predictions = {}, {}
    for subject, path in files.items():
        shots = _shots(Path(ceval_dir), subject, few_shot)
        result = score_subject(model, subject, read_ceval_csv(path), shots, choice_ids)
        predictions[subject] = result.pop("predictions")
        summary[subject] = result
    correct = sum(s["correct"] for s in summary.values())
    total = sum(s["total"] for s in summary.values())
    summary["All"] = {"correct": correct, "total": total,
                      "accuracy": correct / total if total else 0.0}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LlmcError(f"{out}: cannot create: {e.strerror}") from None
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / "predictions.json",
                 json.dumps(predictions, indent=2, ensure_ascii=False) + "\n")
    return summary
