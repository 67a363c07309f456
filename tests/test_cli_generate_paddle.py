"""`llmc generate --runtime paddle`: cache-, full- and inference-form (ascend910b) artifacts
give the reference interpreter's greedy tokens; the devices this Paddle lacks and the flags
of other runtimes are one line, exit 2."""

from __future__ import annotations

import json

import pytest
from clitools import run_cli

pytest.importorskip("paddle")

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    from llmc.artifact import write_artifact
    from llmc.compile import compile_model
    from llmc.frontends.fixtures import write_fixture

    ck = write_fixture(tmp_path_factory.mktemp("ck"), "llama_gqa")
    base = tmp_path_factory.mktemp("arts")
    return {"cpu": write_artifact(compile_model(ck, "cpu"), base / "cpu"),
            "bi150": write_artifact(compile_model(ck, "bi150"), base / "bi150"),
            "full": write_artifact(compile_model(ck, "cpu", form="full"), base / "full"),
            "ascend910b": write_artifact(compile_model(ck, "ascend910b"), base / "npu")}


def new_ids(monkeypatch, capsys, art, runtime) -> list[int]:
    code, out, err = run_cli(monkeypatch, capsys, "generate", art, "--prompt", PROMPT, "-n", "8",
                             "--runtime", runtime, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["runtime"] == runtime
    return doc["results"][0]["new_ids"]


@pytest.mark.parametrize("art", ["cpu", "bi150", "full", "ascend910b"])
def test_paddle_gives_the_reference_greedy_tokens(monkeypatch, capsys, arts, art):
    ours = new_ids(monkeypatch, capsys, arts[art], "paddle")
    assert len(ours) == 8
    assert ours == new_ids(monkeypatch, capsys, arts[art], "reference")


def test_paddle_streams_text_and_timings(monkeypatch, capsys, arts):
    code, out, err = run_cli(monkeypatch, capsys, "generate", arts["cpu"], "--prompt", PROMPT,
                             "-n", "4", "--runtime", "paddle", "--device", "cpu")
    assert code == 0, err
    assert err.startswith("paddle: prefill ")


@pytest.mark.parametrize("args, words", [
    (("ascend910b", "--runtime", "paddle", "--device", "npu"), "paddle-custom-npu"),
    (("cpu", "--runtime", "paddle", "--device", "npu"), "paddle-custom-npu"),
    (("cpu", "--runtime", "paddle", "--device", "mlu"), "paddle-custom-mlu"),
    (("cpu", "--runtime", "reference", "--device", "gpu"), "applies to --runtime paddle"),
    (("cpu", "--runtime", "paddle", "--provider", "cuda"), "takes --device"),
])
def test_what_paddle_cannot_run_is_one_line(monkeypatch, capsys, arts, args, words):
    art, *flags = args
    code, _, err = run_cli(monkeypatch, capsys, "generate", arts[art], "--prompt", PROMPT,
                           *flags)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err
