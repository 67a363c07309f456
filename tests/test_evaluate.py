"""Evaluation: strided-window perplexity scores every token once and equals exp(mean NLL)
computed directly from full-form logits; C-Eval accuracy and summary.json."""

import csv
import json

import numpy as np
import pytest

from llmc.compiler.errors import LlmcError
from llmc.evaluate import EvalModel, build_prompt, ceval, choice_token_ids, perplexity
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full
from llmc.frontends.loader import open_checkpoint
from llmc.runtime.evaluate import sequence_nll, windows
from llmc.runtime.generate import full_logits

VOCAB = 256


class CharTokenizer:
    """One token per character (BOS = 1): makes A/B/C/D distinct tokens."""

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [3 + ord(c) % 250 for c in text]


def direct_nll(logits, ids):
    """-log p(ids[t] | logits[t-1]) summed over t >= 1, by log-sum-exp."""
    lg = logits.astype(np.float64)
    m = lg.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[:, 0]
    return float(sum(lse[t - 1] - lg[t - 1, ids[t]] for t in range(1, len(ids))))


def test_windows_score_every_token_once():
    assert windows(10, 4, 3) == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    assert windows(6, 4, 1) == [(0, 4, 1), (1, 5, 4), (2, 6, 5)]
    assert windows(3, 8, 8) == [(0, 3, 1)] and windows(1, 4, 2) == []
    for n in range(0, 30):
        for window in range(2, 9):
            for stride in range(1, window + 1):
                scored = [t for _, end, first in windows(n, window, stride)
                          for t in range(first, end)]
                assert scored == list(range(1, n)), (n, window, stride)
    for w, s in [(1, 1), (4, 5), (4, 0)]:
        with pytest.raises(LlmcError, match="window"):
            windows(10, w, s)


def test_context_free_model_gives_the_same_nll_for_any_windows():
    table = np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=37)
    want = direct_nll(table[ids], ids)
    for window, stride in [(37, 37), (8, 8), (8, 3), (2, 1), (5, 5)]:
        got = sequence_nll(lambda x: table[x], ids, window, stride)
        assert got.tokens == 36
        assert got.nll == pytest.approx(want, rel=1e-9)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fixtures.write_fixture(tmp_path_factory.mktemp("m"), "llama", "hf")


def test_perplexity_equals_exp_mean_nll_of_full_logits(model_dir):
    model = EvalModel.from_dir(model_dir)
    ck = open_checkpoint(model_dir)
    g = build_full(ck.config, ck.naming)
    texts = ["hello world. 你好", "the quick brown fox jumps", "a"]
    nll, count = 0.0, 0
    for t in texts:
        ids = model.tokenizer.encode(t)
        nll += direct_nll(full_logits(g, ck.weights, np.array([ids]))[0], ids)
        count += len(ids) - 1
    r = perplexity(model, texts, window=64, stride=32)
    assert r.tokens == count and r.texts == 3
    assert r.loss == pytest.approx(nll / count, rel=1e-6)
    assert r.perplexity == pytest.approx(np.exp(nll / count), rel=1e-6)
    short = perplexity(model, texts, window=4, stride=2)  # less context: another number
    assert short.tokens == count and short.windows > r.windows
    assert abs(short.loss - r.loss) > 1e-4


def write_subject(d, name, rows):
    with open(d / f"{name}_val.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
        w.writerows(rows)


def test_ceval_accuracy_and_summary(model_dir, tmp_path):
    d = tmp_path / "ceval"
    d.mkdir()
    write_subject(d, "law", [[0, "1+1=?", "2", "3", "4", "5", "A"],
                             [1, "2+2=?", "1", "4", "2", "3", "B"]])
    write_subject(d, "art", [[0, "颜色?", "红", "绿", "蓝", "黑", "C"]])
    model = EvalModel.from_dir(model_dir)
    model.tokenizer = CharTokenizer()
    summary = ceval(model, d, tmp_path / "out")
    # the same choice computed directly from full-form logits of each prompt
    ck = open_checkpoint(model_dir)
    g = build_full(ck.config, ck.naming)
    letters = [3 + ord(c) % 250 for c in "ABCD"]
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    correct = {}
    for subject, rows in [("law", [("0", "1+1=?", "2", "3", "4", "5", "A"),
                                   ("1", "2+2=?", "1", "4", "2", "3", "B")]),
                          ("art", [("0", "颜色?", "红", "绿", "蓝", "黑", "C")])]:
        for row in rows:
            r = dict(zip(["id", "question", "A", "B", "C", "D", "answer"], row))
            ids = CharTokenizer().encode(build_prompt(subject, r, []))
            last = full_logits(g, ck.weights, np.array([ids]))[0, -1]
            letter = "ABCD"[int(np.argmax(last[letters]))]
            assert preds[subject][r["id"]] == letter
            correct[subject] = correct.get(subject, 0) + (letter == r["answer"])
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["law"]["total"] == 2 and summary["law"]["correct"] == correct["law"]
    assert summary["All"]["total"] == 3
    assert summary["All"]["correct"] == correct["law"] + correct["art"]
    assert summary["All"]["accuracy"] == pytest.approx(summary["All"]["correct"] / 3)


def test_ceval_bad_input(model_dir, tmp_path):
    model = EvalModel.from_dir(model_dir)
    with pytest.raises(LlmcError, match="distinct tokens"):
        choice_token_ids(model.tokenizer)  # the fixture's tokenizer maps B/C/D to <unk>
    model.tokenizer = CharTokenizer()
    write_subject(tmp_path, "x", [[0, "q", "a", "b", "c", "d", "E"]])
    with pytest.raises(LlmcError, match="line 2: field 'answer'"):
        ceval(model, tmp_path, tmp_path / "out")
    (tmp_path / "x_val.csv").write_text("id,question,answer\n0,q,A\n")
    with pytest.raises(LlmcError, match="header must be"):
        ceval(model, tmp_path, tmp_path / "out")
    with pytest.raises(LlmcError, match="no C-Eval CSV"):
        (tmp_path / "empty").mkdir()
        ceval(model, tmp_path / "empty", tmp_path / "o2")
