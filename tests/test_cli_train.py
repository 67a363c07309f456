"""`llmc merge`, `llmc eval` and `llmc data prepare` through the CLI: each happy path on tiny
fixtures agrees with the Python API it wraps, --json parses, and refusals are one line, exit 2."""

import csv
import json

import numpy as np
import pytest

from clitools import run_cli
from llmc.evaluate import EvalModel, ceval, perplexity
from llmc.frontends import fixture_tokenizers, fixtures
from llmc.frontends.data import open_mmap, tokenize_corpus
from llmc.frontends.data.synthetic import write_tiny_corpus
from llmc.frontends.llama import build_full
from llmc.frontends.loader import open_checkpoint
from llmc.frontends.tokenizer import load_tokenizer
from llmc.lora import add_lora, save_lora
from llmc.passes.lora import lora_params


def one_line_error(code, err, needle):
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert needle in err, err


def make_adapter(base, out, targets="q,v,down"):
    ck = open_checkpoint(base)
    g = build_full(ck.config, ck.naming)
    recorded = add_lora(g, targets, rank=2, alpha=4.0)
    rng = np.random.default_rng(3)
    weights = {n: rng.normal(0, 0.2, g.params[n].type.shape).astype(np.float32)
               for n in lora_params(g)}
    return save_lora(out, recorded, weights, str(base))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny llama whose tokenizer spells A/B/C/D (C-Eval needs distinct letter tokens)."""
    d = fixtures.write_fixture(tmp_path_factory.mktemp("base") / "模型", "llama", "hf-numpy")
    corpus = fixture_tokenizers.CORPUS + ["答案：A 答案：B 答案：C 答案：D"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fixture_tokenizers, "CORPUS", corpus)
        fixture_tokenizers.write_tokenizer_json(d)
    return d


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return make_adapter(base, tmp_path_factory.mktemp("lora") / "adapter")


# ---- merge ------------------------------------------------------------------------------


def test_merge_writes_the_checkpoint_and_reports(monkeypatch, capsys, base, adapter, tmp_path):
    out = tmp_path / "merged"
    code, stdout, err = run_cli(monkeypatch, capsys, "merge", base, adapter, "-o", out)
    assert code == 0, err
    layers = open_checkpoint(base).config.num_layers
    assert f"merged {3 * layers} adapter module(s) into {3 * layers} tensor(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base.iterdir())
    merged, orig = open_checkpoint(out).weights, open_checkpoint(base).weights
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.allclose(merged.raw(name), orig.raw(name))
    k = "model.layers.0.self_attn.k_proj.weight"
    assert np.array_equal(merged.raw(k), orig.raw(k))
    code, stdout, err = run_cli(monkeypatch, capsys, "merge", base, adapter, "-o", out, "--json")
    assert code == 0, err  # an earlier merge is replaced
    doc = json.loads(stdout)
    assert doc["output"] == str(out) and len(doc["modules"]) == 3 * layers
    assert doc["changed"][name] == ["model.layers.0.self_attn.q_proj"]


def test_merge_refusals(monkeypatch, capsys, base, adapter, tmp_path):
    for out in (base / "merged", base, adapter, adapter.parent):
        for force in ([], ["--force"]):  # never over an input, whatever the flag
            code, _, err = run_cli(monkeypatch, capsys, "merge", base, adapter, "-o", out, *force)
            one_line_error(code, err, "refusing to write there")
    assert not (base / "merged").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = run_cli(monkeypatch, capsys, "merge", base, adapter, "-o", other)
    one_line_error(code, err, "is not a checkpoint; it would be replaced whole (pass --force")
    assert (other / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(monkeypatch, capsys, "merge", base, adapter, "-o", other, "--force")
    assert code == 0, err and (other / "config.json").is_file()
    code, _, err = run_cli(monkeypatch, capsys, "merge", base, tmp_path / "missing", "-o",
                           tmp_path / "m2")
    one_line_error(code, err, "missing")
    assert not (tmp_path / "m2").exists()


# ---- eval --data ------------------------------------------------------------------------

TEXTS = ["hello world. 你好", "the quick brown fox jumps over the lazy dog", "a"]


def test_eval_data_matches_the_api(monkeypatch, capsys, base, adapter, tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS),
                     encoding="utf-8")
    raw = tmp_path / "t.txt"
    raw.write_text("\n\n".join(TEXTS) + "\n", encoding="utf-8")
    want = perplexity(EvalModel.from_dir(base), TEXTS, 8, 3)
    for data in (jsonl, raw):
        code, out, err = run_cli(monkeypatch, capsys, "eval", base, "--data", data,
                                 "--window", 8, "--stride", 3, "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["loss"] == pytest.approx(want.loss, rel=1e-9)
        assert (doc["tokens"], doc["texts"], doc["windows"]) == (want.tokens, 3, want.windows)
        assert "模型" in out  # non-ASCII kept readable
    code, out, err = run_cli(monkeypatch, capsys, "eval", base, "--data", jsonl)
    assert code == 0 and err == ""  # no progress bar off a terminal
    full = perplexity(EvalModel.from_dir(base), TEXTS, 512, 256)
    assert f"loss {full.loss:.4f}  perplexity {full.perplexity:.4f}" in out
    code, out, err = run_cli(monkeypatch, capsys, "eval", base, "--data", jsonl, "--adapter",
                             adapter, "--json")
    assert code == 0, err
    with_lora = perplexity(EvalModel.from_dir(base, adapter), TEXTS, 512, 256)
    assert json.loads(out)["loss"] == pytest.approx(with_lora.loss, rel=1e-9)
    assert abs(with_lora.loss - full.loss) > 1e-4


def test_eval_bad_data_line(monkeypatch, capsys, base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello world"}\n{"text": \n{"txt": "x"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "eval", base, "--data", bad)
    one_line_error(code, err, f"{bad}:2: malformed JSON")
    code, out, err = run_cli(monkeypatch, capsys, "eval", base, "--data", bad, "--json",
                             "--on-error", "skip")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["skipped_lines"] == 2 and doc["texts"] == 1
    assert doc["errors"][1] == f"{bad}:3: field 'text' must be a string, got missing"
    assert err.startswith("warning: skipped 2 bad line(s); first: ") and ":2:" in err


@pytest.mark.parametrize("args,needle", [
    ([], "give --data FILE or --ceval DIR (exactly one)"),
    (["--data", "x.jsonl", "--ceval", "d"], "exactly one"),
    (["--data", "x.jsonl", "--window", "1"], "need --window >= 2"),
    (["--data", "x.jsonl", "--window", "4", "--stride", "5"], "1 <= --stride <= --window"),
    (["--data", "x.jsonl", "--split", "test"], "--split does not apply to --data"),
    (["--data", "x.jsonl", "-o", "out"], "--output does not apply to --data"),
    (["--ceval", "d", "-o", "out", "--window", "8"], "--window does not apply to --ceval"),
    (["--ceval", "d"], "--ceval needs -o/--output DIR"),
    (["--ceval", "d", "-o", "out", "--few-shot", "-1"], "--few-shot must be >= 0"),
    (["--data", "missing.jsonl"], "missing.jsonl: no such data file"),
    (["--ceval", "missing", "-o", "out"], "--ceval missing: no such directory"),
])
def test_eval_flag_errors(monkeypatch, capsys, base, tmp_path, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "eval", base, *args)
    one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_eval_missing_model_dir(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "nope", "--data", "x.jsonl")
    one_line_error(code, err, f"eval: MODEL {tmp_path / 'nope'}: no such directory")
    (tmp_path / "f").write_text("")
    code, _, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "f", "--data", "x.jsonl")
    one_line_error(code, err, f"eval: MODEL {tmp_path / 'f'}: is not a directory")


# ---- eval --ceval -----------------------------------------------------------------------


def write_subject(d, name, rows, split="val"):
    with open(d / f"{name}_{split}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
        w.writerows(rows)


@pytest.fixture
def ceval_dir(tmp_path):
    d = tmp_path / "ceval"
    d.mkdir()
    write_subject(d, "law", [[0, "1+1=?", "2", "3", "4", "5", "A"],
                             [1, "2+2=?", "1", "4", "2", "3", "B"]])
    write_subject(d, "art", [[0, "颜色?", "红", "绿", "蓝", "黑", "C"]])
    write_subject(d, "art", [[0, "天?", "蓝", "绿", "红", "黑", "A"]], split="dev")
    write_subject(d, "law", [[0, "3+3=?", "5", "7", "6", "9", "C"]], split="dev")
    return d


def test_eval_ceval_writes_summary(monkeypatch, capsys, base, ceval_dir, tmp_path):
    want = ceval(EvalModel.from_dir(base), ceval_dir, tmp_path / "api")
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", base, "--ceval", ceval_dir,
                                "-o", out)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text()) == want
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[1:-1]}
    assert set(rows) == {"law", "art", "All"}
    for subject, s in want.items():
        assert rows[subject] == [str(s["correct"]), str(s["total"]),
                                 f"{100 * s['accuracy']:.1f}%"]
    assert stdout.splitlines()[-1].startswith(f"wrote {out / 'summary.json'}")
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", base, "--ceval", ceval_dir,
                                "-o", out, "--json", "--few-shot", 1, "--split", "val")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["few_shot"] == 1 and doc["summary"]["All"]["total"] == 3
    assert doc["summary"] == json.loads((out / "summary.json").read_text())
    shots = ceval(EvalModel.from_dir(base), ceval_dir, tmp_path / "api1", few_shot=1)
    assert doc["summary"] == shots


def test_eval_ceval_refusals(monkeypatch, capsys, base, ceval_dir, tmp_path):
    for out in (base / "results", ceval_dir):
        code, _, err = run_cli(monkeypatch, capsys, "eval", base, "--ceval", ceval_dir,
                               "-o", out)
        one_line_error(code, err, "refusing to overwrite it (pass --force to allow)")
    assert not (base / "results").exists() and not (ceval_dir / "summary.json").exists()
    code, _, err = run_cli(monkeypatch, capsys, "eval", base, "--ceval", ceval_dir, "-o",
                           tmp_path / "o", "--split", "test")
    one_line_error(code, err, "no C-Eval CSV files")


# ---- data prepare -----------------------------------------------------------------------


def test_data_prepare_round_trips(monkeypatch, capsys, base, tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus.jsonl", n=20)
    prefix = tmp_path / "out" / "c"
    code, out, err = run_cli(monkeypatch, capsys, "data", "prepare", corpus, "-o", prefix,
                             "--tokenizer", base, "--json")
    assert code == 0, err
    doc = json.loads(out)
    want, _ = tokenize_corpus(corpus, load_tokenizer(base))
    read = open_mmap(prefix)
    assert doc["documents"] == 20 and doc["dtype"] == "uint16"
    assert doc["tokens"] == int(want.sizes.sum()) == int(read.sizes.sum())
    assert np.array_equal(np.asarray(read.data), want.data)
    code, out, err = run_cli(monkeypatch, capsys, "data", "prepare", corpus, "-o",
                             tmp_path / "noeos", "--tokenizer", base, "--no-append-eos")
    assert code == 0, err
    assert out.splitlines()[0] == (f"20 documents, {doc['tokens'] - 20} tokens, dtype uint16")
    assert open_mmap(tmp_path / "noeos").data[-1] != load_tokenizer(base).eos_token_id


def test_data_prepare_refusals(monkeypatch, capsys, base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello"}\n\n{"text": 3}\n')
    code, _, err = run_cli(monkeypatch, capsys, "data", "prepare", bad, "-o", tmp_path / "p",
                           "--tokenizer", base)
    one_line_error(code, err, f"{bad}:3: field 'text' must be a string")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    code, out, err = run_cli(monkeypatch, capsys, "data", "prepare", bad, "-o", tmp_path / "p",
                             "--tokenizer", base, "--on-error", "skip", "--json")
    assert code == 0 and json.loads(out)["skipped_lines"] == 1, err
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["-o", base / "c", "--tokenizer", base], "inside the checkpoint directory"),
             (["-o", tmp_path / "p", "--tokenizer", tmp_path / "none"], "no such directory"),
             (["-o", tmp_path / "p.idx", "--tokenizer", empty], "no tokenizer")]
    for args, needle in cases:
        code, _, err = run_cli(monkeypatch, capsys, "data", "prepare", bad, *args)
        one_line_error(code, err, needle)
    code, _, err = run_cli(monkeypatch, capsys, "data", "prepare", tmp_path / "p.bin", "-o",
                           tmp_path / "p", "--tokenizer", base)
    one_line_error(code, err, "refusing to overwrite it")
