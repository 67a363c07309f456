"""Tensor-parallel pipelines as data, the compile options that choose them, and the
per-rank parameter sizes in the compile report."""

import pytest
from llmc.compiler.errors import LlmcError
from llmc.compiler.text import parse
from llmc.passes.pipelines import (
    ASCEND_VENDOR_PASSES,
    TARGETS,
    Parallel,
    passes_for,
    pipeline_for,
)

from llmc.compile import param_sizes, stored_itemsize


def test_tp_1_is_the_target_pipeline_unchanged():
    for t in TARGETS:
        assert pipeline_for(t, tp=1) == pipeline_for(t) == TARGETS[t].spec


def test_ascend_tp_shards_first_drops_whole_layer_fusions_and_adds_mc2():
    got = passes_for("ascend910b", Parallel(tp=8))
    assert got[0] == "shard_tensor_parallel{tp=8}"
    assert got[-3:] == ("fuse_mc2", "cse", "dce")
    assert [p for p in ASCEND_VENDOR_PASSES if p not in got] == [
        "llama_fuse_attention_layer_begin", "llama_fuse_attention_layer_end",
        "llama_fuse_attention_layer", "llama_fuse_lm_head_with_slice", "llama_fuse_lm_head"]
    assert "fuse_mc2" not in passes_for("ascend910b", Parallel(tp=8, mc2=False))


@pytest.mark.parametrize("target", ["mlu370", "bi150", "cuda", "cpu"])
def test_other_targets_take_mc2_by_flag_only(target):
    plain = passes_for(target, Parallel(tp=2))
    assert plain[0] == "shard_tensor_parallel{tp=2}" and "fuse_mc2" not in plain
    flagged = passes_for(target, Parallel(tp=2, sequence_parallel=True, mc2=True))
    assert flagged[0] == "shard_tensor_parallel{tp=2,sequence_parallel=true}"
    assert flagged[-3:] == ("fuse_mc2", "cse", "dce")
    assert plain[1:] == TARGETS[target].passes


@pytest.mark.parametrize("kwargs, message", [
    ({"tp": 0}, "--tp must be a positive integer, got 0"),
    ({"tp": True}, "--tp must be a positive integer"),
    ({"tp": 1, "sequence_parallel": True}, "--sequence-parallel needs --tp greater than 1"),
    ({"tp": 1, "mc2": True}, "--mc2 needs --tp greater than 1"),
])
def test_bad_parallel_options_are_user_errors(kwargs, message):
    with pytest.raises(LlmcError, match=message):
        Parallel(**kwargs)


def test_tp_1_with_mc2_off_is_allowed():
    assert passes_for("cpu", Parallel(tp=1, mc2=False)) == TARGETS["cpu"].passes


SHARDED = """graph @g(%x: f32[2, 8]) {
  param @col: f32[16, 8]
  param @row: f32[8, 16]
  param @norm: f32[8]
  param @mixed: f32[4, 8]
  %r = rank() {nranks = 4} : i64[]
  %c = shard(@col, %r) {axis = 0, parts = 4} : f32[4, 8]
  %w = shard(@row, %r) {axis = 1, parts = 4} : f32[8, 4]
  %kv = shard(@mixed, %r) {axis = 0, parts = 2, replicas = 2} : f32[2, 8]
  %n = mul(%x, @norm) : f32[2, 8]
  %h = linear(%n, %c) : f32[2, 4]
  %p = linear(%h, %w) : f32[2, 8]
  %k = linear(%x, %kv) : f32[2, 2]
  %m = linear(%x, @mixed) : f32[2, 4]
  return %p, %k, %m
}
"""


def test_param_sizes_count_shards_per_rank_and_the_rest_whole():
    sizes = param_sizes(parse(SHARDED))
    total = 16 * 8 + 8 * 16 + 8 + 4 * 8
    # @mixed is read both sharded and whole: a rank holds all of it
    per_rank = 4 * 8 + 8 * 4 + 8 + 4 * 8
    assert sizes == {"elements": total, "elements_per_rank": per_rank,
                     "bytes": 4 * total, "bytes_per_rank": 4 * per_rank}


def test_kv_heads_replicated_over_ranks_count_their_shard():
    g = parse(SHARDED.replace("%m = linear(%x, @mixed) : f32[2, 4]",
                              "%m = linear(%x, %kv) : f32[2, 2]"))
    sizes = param_sizes(g)
    assert sizes["elements_per_rank"] == 4 * 8 + 8 * 4 + 8 + 2 * 8


@pytest.mark.parametrize("flags, message", [
    (["--sequence-parallel"], "error: --sequence-parallel needs --tp greater than 1"),
    (["--tp", "1", "--mc2"], "error: --mc2 needs --tp greater than 1"),
])
def test_compile_refuses_parallel_flags_without_tp(flags, message, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "llama2-13b.json"
    r = subprocess.run([sys.executable, "-m", "llmc.cli", "compile", "--config", str(config),
                        "-t", "cpu", "-o", str(tmp_path / "out"), *flags],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith(message) and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_param_bytes_at_the_stored_itemsize():
    g = parse(SHARDED)
    sizes = param_sizes(g, {"col": 2, "row": 2, "mixed": 1})
    assert sizes["bytes"] == 2 * 16 * 8 + 2 * 8 * 16 + 4 * 8 + 1 * 4 * 8
    assert sizes["bytes_per_rank"] == 2 * 4 * 8 + 2 * 8 * 4 + 4 * 8 + 1 * 4 * 8
    assert sizes["elements"] == param_sizes(g)["elements"]


def test_stored_itemsize_from_the_manifest_else_the_config_dtype():
    manifest = {"tensors": {"a": {"shape": [2], "dtype": "bf16"}, "b": {"shape": [2]},
                            "c": {"shape": [2], "dtype": "f32"}}}
    assert stored_itemsize(manifest, "float16") == {"a": 2, "b": 2, "c": 4}
    assert stored_itemsize(manifest, "float32") == {"a": 2, "b": 4, "c": 4}
    assert stored_itemsize(manifest, "int4-awq") == {"a": 2, "c": 4}


@pytest.mark.parametrize("target, flags, parallel", [
    ("ascend910b", ["--tp", "2"], Parallel(2)),
    ("ascend910b", ["--tp", "8", "--no-mc2"], Parallel(8, mc2=False)),
    ("cpu", ["--tp", "4", "--sequence-parallel", "--mc2"], Parallel(4, True, True)),
    ("cuda", ["--tp", "1"], Parallel()),
])
def test_passes_command_lists_the_tensor_parallel_pipeline(monkeypatch, capsys, target, flags,
                                                          parallel):
    """`llmc passes --target T --tp N ...` lists what `llmc compile` with those flags runs."""
    import json

    from clitools import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "passes", "--target", target, *flags, "--json")
    assert code == 0, err
    assert [r["spec"] for r in json.loads(out)] == list(passes_for(target, parallel))
    code, out, _ = run_cli(monkeypatch, capsys, "passes", "--target", target, *flags)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 + len(passes_for(target, parallel))
    assert lines[0].startswith(f"pipeline for target '{target}'")
    assert (f"(tp {parallel.tp}" in lines[0]) == (parallel.tp > 1)
    assert lines[1].split()[1] == passes_for(target, parallel)[0]


@pytest.mark.parametrize("flags, message", [
    (["--tp", "2"], "need --target"),
    (["--target", "cpu", "--sequence-parallel"], "--sequence-parallel needs --tp greater than 1"),
    (["--target", "cpu", "--mc2"], "--mc2 needs --tp greater than 1"),
])
def test_passes_command_refuses_parallel_flags_it_cannot_use(monkeypatch, capsys, flags, message):
    from clitools import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "passes", *flags)
    assert code == 2 and message in err and len(err.splitlines()) == 1 and not out
