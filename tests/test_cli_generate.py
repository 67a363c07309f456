"""`llmc generate` and `llmc chat` through the CLI: both runtimes, streaming, batches,
sampling flags, stop strings, --json, providers, and the chat's stdin."""

from __future__ import annotations

import io
import json
import sys

import onnxruntime as ort
import pytest
from clitools import run_cli

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model
    from llmc.frontends.fixtures import write_fixture

    ck = write_fixture(tmp_path_factory.mktemp("ck"), "llama_gqa")
    base = tmp_path_factory.mktemp("arts")
    return {"cpu": write_artifact(compile_model(ck, "cpu"), base / "cpu"),
            "full": write_artifact(compile_model(ck, "cpu", form="full"), base / "full"),
            "ascend910b": write_artifact(compile_model(ck, "ascend910b"), base / "npu")}


def gen_json(monkeypatch, capsys, art, *args) -> dict:
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def refused(monkeypatch, capsys, *args) -> str:
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_both_runtimes_give_the_same_greedy_text(monkeypatch, capsys, arts):
    runs = {}
    for runtime in ("onnxruntime", "reference"):
        code, out, err = run_cli(monkeypatch, capsys, "generate", arts["cpu"], "--prompt", PROMPT,
                                 "-n", "8", "--runtime", runtime)
        assert code == 0, err
        assert err.startswith(f"{runtime}: prefill ") and "first token" in err
        assert "decode" in err and err.rstrip().endswith("tok/s)")
        runs[runtime] = out
    assert runs["onnxruntime"] == runs["reference"] and runs["reference"].strip()
    default = gen_json(monkeypatch, capsys, arts["cpu"], "--prompt", PROMPT, "-n", "8")
    assert default["runtime"] == "onnxruntime" and default["provider"] == "cpu"
    assert default["results"][0]["text"] + "\n" == runs["reference"]
    for name in ("full", "ascend910b"):  # the other forms default to the reference interpreter
        doc = gen_json(monkeypatch, capsys, arts[name], "--prompt", PROMPT, "-n", "8")
        assert doc["runtime"] == "reference" and doc["provider"] is None
        assert doc["results"][0]["new_ids"] == default["results"][0]["new_ids"]


def test_single_prompt_text_streams_token_by_token(monkeypatch, capsys, arts):
    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.writes: list[str] = []

        def write(self, s):
            self.writes.append(s)
            return super().write(s)

    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    code, _, err = run_cli(monkeypatch, capsys, "generate", arts["cpu"], "--ids", "1,2,3", "-n", "6")
    assert code == 0, err
    pieces = [w for w in rec.writes if w not in ("", "\n")]
    assert len(pieces) == 6 and rec.getvalue().count(",") == 5  # one id per write


def test_batch_file_prints_each_result_with_its_index(monkeypatch, capsys, arts, tmp_path):
    prompts = [PROMPT, "hello", "a much longer prompt than the other two of them"]
    batch = tmp_path / "prompts.txt"
    batch.write_text("\n".join(prompts[:2]) + "\n\n" + prompts[2] + "\n", encoding="utf-8")
    code, out, err = run_cli(monkeypatch, capsys, "generate", arts["cpu"], "--batch-file", batch,
                             "-n", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert sorted(line[:3] for line in lines) == ["[0]", "[1]", "[2]"]
    doc = gen_json(monkeypatch, capsys, arts["cpu"], "--batch-file", batch, "-n", "5")
    for i, p in enumerate(prompts):
        one = gen_json(monkeypatch, capsys, arts["cpu"], "--prompt", p, "-n", "5")["results"][0]
        assert doc["results"][i]["new_ids"] == one["new_ids"]
        assert f"[{i}] {one['text']}" in lines
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "no prompts (one per line)" in refused(monkeypatch, capsys, "generate", arts["cpu"],
                                                  "--batch-file", empty)


def test_sampling_flags(monkeypatch, capsys, arts):
    greedy = gen_json(monkeypatch, capsys, arts["cpu"], "--ids", "1,2,3", "-n", "8")
    ids = greedy["results"][0]["new_ids"]

    def sample(*flags):
        return gen_json(monkeypatch, capsys, arts["cpu"], "--ids", "1,2,3", "-n", "8",
                        *flags)["results"][0]["new_ids"]

    hot = ("--temperature", "1.5", "--top-p", "0.95", "--repetition-penalty", "1.3")
    draws = {tuple(sample(*hot, "--seed", str(s))) for s in range(4)}
    assert len(draws) > 1  # a fixed seed reproduces; different seeds draw differently
    assert sample(*hot, "--seed", "7") == sample(*hot, "--seed", "7")
    assert sample("--temperature", "2", "--top-k", "1", "--seed", "3") == ids  # top-k 1: greedy
    on_reference = gen_json(monkeypatch, capsys, arts["cpu"], "--ids", "1,2,3", "-n", "8",
                            *hot, "--seed", "7", "--runtime", "reference")
    assert on_reference["results"][0]["new_ids"] == sample(*hot, "--seed", "7")


@pytest.mark.parametrize("flags,needle", [
    (("--temperature", "-1"), "generate: --temperature must be >= 0, got -1.0"),
    (("--top-k", "-2"), "generate: --top-k must be >= 0, got -2"),
    (("--top-p", "1.5"), "generate: --top-p must be in (0, 1], got 1.5"),
    (("--top-p", "0"), "--top-p must be in (0, 1]"),
    (("--repetition-penalty", "0"), "generate: --repetition-penalty must be > 0"),
    (("-n", "0"), "--max-new-tokens must be >= 1, got 0"),
    (("--threads", "-1"), "--threads must be >= 0"),
    (("--temperature", "nan"), "generate: --temperature must be >= 0, got nan"),
    (("--temperature", "hot"), "Invalid value for '--temperature'"),
])
def test_bad_sampling_values_are_one_line(monkeypatch, capsys, arts, flags, needle):
    assert needle in refused(monkeypatch, capsys, "generate", arts["cpu"], "--ids", "1,2", *flags)


def test_stop_strings_end_the_text_before_them(monkeypatch, capsys, arts):
    free = gen_json(monkeypatch, capsys, arts["cpu"], "--prompt", PROMPT, "-n", "12")["results"][0]
    text = free["text"]
    assert len(text) >= 6
    stop = text[3:5]
    doc = gen_json(monkeypatch, capsys, arts["cpu"], "--prompt", PROMPT, "-n", "12",
                   "--stop", "never-there", "--stop", stop)["results"][0]
    assert doc["finish_reason"] == "stop" and doc["text"] == text[:text.index(stop)]
    ids = gen_json(monkeypatch, capsys, arts["cpu"], "--ids", "1,2", "--stop", stop)["results"][0]
    assert ids["text"] is not None  # --stop with --ids loads the tokenizer


def test_inputs_and_runtimes_are_checked(monkeypatch, capsys, arts):
    assert "exactly one" in refused(monkeypatch, capsys, "generate", arts["cpu"])
    assert "exactly one" in refused(monkeypatch, capsys, "generate", arts["cpu"], "--ids", "1",
                                    "--prompt", "x")
    err = refused(monkeypatch, capsys, "generate", arts["full"], "--ids", "1", "--runtime",
                  "onnxruntime")
    assert "full-form artifact for cpu does not run on onnxruntime" in err
    assert "--form cache" in err and "--runtime reference" in err
    err = refused(monkeypatch, capsys, "generate", arts["cpu"], "--ids", "1", "--runtime", "tvm")
    assert "'tvm' is not one of 'onnxruntime', 'reference'" in err
    err = refused(monkeypatch, capsys, "generate", arts["ascend910b"], "--ids", "1",
                  "--provider", "cuda")
    assert "--provider cuda applies to --runtime onnxruntime" in err


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has a CUDA provider")
def test_cuda_provider_says_clearly_it_is_missing(monkeypatch, capsys, arts, tmp_path):
    import shutil

    art = shutil.copytree(arts["cpu"], tmp_path / "art", ignore=shutil.ignore_patterns("onnx"))
    err = refused(monkeypatch, capsys, "generate", art, "--ids", "1,2", "--provider", "cuda")
    assert "--provider cuda: this onnxruntime" in err and "has no CUDAExecutionProvider" in err
    assert "install onnxruntime-gpu" in err
    assert not (art / "onnx").exists()  # refused before exporting anything
    err = refused(monkeypatch, capsys, "chat", art, "--provider", "cuda")
    assert "has no CUDAExecutionProvider" in err


def chat(monkeypatch, capsys, art, lines: str, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    return run_cli(monkeypatch, capsys, "chat", art, *args)


@pytest.mark.parametrize("name", ["cpu", "ascend910b"])
def test_chat_two_turns_reset_and_exit(monkeypatch, capsys, arts, name):
    code, out, err = chat(monkeypatch, capsys, arts[name],
                          "hello there\nand again\n/reset\nhello there\n/exit\nnot read\n",
                          "-n", "6", "--stats", "--system", "be brief")
    assert code == 0, err
    assert out.count("USER: ") == 5 and out.count("ASSISTANT: ") == 3
    assert "(history cleared)" in out and out.count("[prefill ") == 3
    answers = [line.split("ASSISTANT: ", 1)[1] for line in out.splitlines()
               if "ASSISTANT: " in line]
    assert answers[0] == answers[2]  # after /reset the same first turn, the same answer (greedy)
    prefills = [int(line.split("[prefill ")[1].split()[0]) for line in out.splitlines()
                if line.startswith("[prefill ")]
    assert prefills[1] < prefills[0] + 8  # the second turn prefills only what is new


def test_chat_flags_are_checked(monkeypatch, capsys, arts):
    assert "chat: --top-p must be in (0, 1]" in refused(monkeypatch, capsys, "chat", arts["cpu"],
                                                        "--top-p", "2")
    code, out, err = chat(monkeypatch, capsys, arts["cpu"], "hi\n", "-n", "4", "--temperature",
                          "0.7", "--seed", "1")
    assert code == 0 and out.count("ASSISTANT: ") == 1, err
