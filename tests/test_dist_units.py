"""The single-process pieces of the distributed Paddle runtime: which part of a tensor a
rank holds (blocks, replicas) and back, in numpy and Paddle; which parameters are
sharded or hold partial gradients; the collective log; the launcher's command line and
its failure report; a one-rank program of a graph with collectives."""

import numpy as np
import pytest

import dist_toy as toy
from llmc.compiler.errors import LlmcError
from llmc.compiler.ops.collective import shard as reference_shard
from llmc.compiler.text import parse
from llmc.runtime.paddle.dist import CommLog, grid_groups
from llmc.runtime.paddle.dist_graph import param_shards, partial_params
from llmc.runtime.paddle.dist_shard import ShardSpec, unshard

CASES = [  # (shape, axis, parts, replicas, blocks)
    ((8, 3), 0, 2, 1, ()),
    ((3, 8), 1, 4, 1, ()),
    ((12, 2), 0, 2, 1, (8, 2, 2)),  # a packed q/k/v weight
    ((4, 3), 0, 2, 2, ()),  # kv heads replicated over 2 ranks each
    ((2, 12), -1, 2, 2, (4, 4, 4)),
]


@pytest.mark.parametrize("shape,axis,parts,replicas,blocks", CASES)
def test_a_part_is_the_ir_shard_and_the_parts_make_the_whole(shape, axis, parts, replicas,
                                                              blocks):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    attrs = {"axis": axis, "parts": parts, "replicas": replicas, "blocks": blocks}
    tp = parts * replicas
    pieces = []
    for r in range(tp):
        spec = ShardSpec.of(attrs, r)
        want = reference_shard(x, np.int64(r), axis, parts, replicas, blocks)
        np.testing.assert_array_equal(spec.take(x), want)
        pieces.append(spec.take(x))
    np.testing.assert_array_equal(unshard(pieces, ShardSpec.of(attrs, 0)), x)


@pytest.mark.parametrize("shape,axis,parts,replicas,blocks", CASES)
def test_paddle_parts_and_their_adjoint(shape, axis, parts, replicas, blocks):
    paddle = pytest.importorskip("paddle")
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    attrs = {"axis": axis, "parts": parts, "replicas": replicas, "blocks": blocks}
    total = np.zeros_like(x)
    for r in range(0, parts * replicas, replicas):
        spec = ShardSpec.of(attrs, r)
        part = spec.take_paddle(paddle, paddle.to_tensor(x))
        np.testing.assert_array_equal(part.numpy(), spec.take(x))
        placed = spec.place_paddle(paddle, part, x.shape[axis]).numpy()
        assert placed.shape == x.shape
        total += placed
    np.testing.assert_array_equal(total, x)  # each element placed back exactly once


def test_a_memory_map_is_read_only_where_the_part_lies(tmp_path):
    np.save(tmp_path / "w.npy", np.arange(64, dtype=np.float32).reshape(16, 4))
    mapped = np.load(tmp_path / "w.npy", mmap_mode="r")
    part = ShardSpec.of({"axis": 0, "parts": 4, "replicas": 1, "blocks": ()}, 2).take(mapped)
    assert isinstance(part, np.memmap) and part.shape == (4, 4)  # a view, nothing copied
    np.testing.assert_array_equal(part, np.arange(32, 48).reshape(4, 4))


def test_a_rank_without_a_part_is_refused():
    with pytest.raises(LlmcError, match="rank 4 has no part"):
        ShardSpec.of({"axis": 0, "parts": 2, "replicas": 2, "blocks": ()}, 4)


def test_sharded_and_partial_parameters_of_the_toy():
    graphs = toy.graphs()
    tp_shards = param_shards(graphs["tp"])
    assert set(tp_shards) == {"embed", "q", "kv", "o", "up", "down", "head"}
    assert tp_shards["kv"]["replicas"] == 2 and tp_shards["o"]["axis"] == 1
    assert partial_params(graphs["tp"]) == set()  # the norm works on replicated values
    assert partial_params(graphs["sp"]) == {"norm"}  # ... but on the rank's seq part in SP
    assert partial_params(graphs["full"]) == set()


def test_a_parameter_read_whole_and_sharded_is_refused():
    g = parse("""graph @g(%x: f32[2, 4]) {
  param @w: f32[4, 4]
  %r = rank() {nranks = 2} : i64[]
  %wr = shard(@w, %r) {axis = 0, parts = 2} : f32[2, 4]
  %a = linear(%x, %wr) : f32[2, 2]
  %b = linear(%x, @w) : f32[2, 4]
  return %a, %b
}
""")
    with pytest.raises(LlmcError, match="@w is read both whole and through `shard`"):
        param_shards(g)


def test_the_collective_log_counts_calls_and_bytes():
    log = CommLog()
    log.record("all_reduce", 64)
    log.record("all_reduce", 32)
    log.record("all_gather", 16, backward=True)
    assert log.summary() == {"all_gather (backward)": {"calls": 1, "bytes": 16},
                             "all_reduce": {"calls": 2, "bytes": 96}}
    log.reset()
    assert log.summary() == {}


def test_the_rank_grid_puts_a_tp_group_on_consecutive_ranks():
    assert grid_groups(4, 2) == ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 4], [1, 5], [2, 6], [3, 7]])
    assert grid_groups(1, 2) == ([[0], [1]], [[0, 1]])


def test_one_rank_runs_the_collectives_of_a_one_rank_group():
    paddle = pytest.importorskip("paddle")
    from llmc.runtime.paddle import PaddleProgram

    g = parse("""graph @g(%x: f32[2, 4]) {
  param @w: f32[6, 4]
  %r = rank() {nranks = 1} : i64[]
  %wr = shard(@w, %r) {axis = 0, parts = 1} : f32[6, 4]
  %xin = grad_all_reduce(%x) {nranks = 1} : f32[2, 4]
  %y = linear(%xin, %wr) : f32[2, 6]
  %s = all_reduce(%y) {nranks = 1} : f32[2, 6]
  %t = all_gather(%s) {axis = 1, nranks = 1} : f32[2, 6]
  return %t
}
""")
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    out = PaddleProgram(g, {"w": w})({"x": x})[0]
    np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-6)
    assert isinstance(out, paddle.Tensor)


def test_a_graph_for_two_ranks_needs_one_process_per_rank():
    pytest.importorskip("paddle")
    from llmc.runtime.paddle import LoweringError, PaddleProgram

    with pytest.raises(LoweringError, match="is for 2 ranks: run the sharded graph with one "
                                            "process per rank"):
        PaddleProgram(toy.graphs()["tp"], toy.weights())


# ---- the launcher (llmc/distributed.py) ---------------------------------------------------

LAUNCH_LOG = """LAUNCH INFO 2026-11-29 19:05:29,381 Pod failed
LAUNCH ERROR 2026-11-29 19:05:29,381 Container failed !!!
Container rank 1 status failed cmd ['/venv/bin/python', '-u', '-m', 'llmc'] code {code} log /r/workerlog.1
LAUNCH INFO 2026-11-29 19:05:29,583 Exit code -15
"""


def test_ranks_per_node_and_the_launch_command(tmp_path):
    from llmc import distributed as d

    assert d.procs_per_node(8, 4, 4) == 8
    with pytest.raises(LlmcError, match="6 ranks do not divide over --nnodes 4"):
        d.procs_per_node(3, 2, 4)
    cmd = d.launch_command(8, ["python", "-m", "llmc", "train"], tmp_path, 4, "10.0.0.1:8090")
    assert cmd[1:] == ["-m", "paddle.distributed.launch", "--nproc_per_node", "8", "--log_dir",
                       str(tmp_path), "--nnodes", "4", "--master", "10.0.0.1:8090", "python",
                       "-m", "llmc", "train"]
    with pytest.raises(LlmcError, match="--nnodes 2: give --master IP:PORT"):
        d.launch_command(1, [], tmp_path, 2)


def run_dir(parent, launch_log: str, **logs):
    d = parent / f"run{len(list(parent.iterdir()))}"
    d.mkdir()
    (d / "launch.log").write_text(launch_log)
    for name, text in logs.items():
        (d / name.replace("_", ".")).write_text(text)
    return d


def test_a_failed_rank_is_named_with_how_it_ended(tmp_path):
    from llmc import distributed as d

    killed = run_dir(tmp_path, LAUNCH_LOG.format(code=-9))
    with pytest.raises(LlmcError, match=r"^rank 1 failed \(killed by SIGKILL\); "
                                        r"paddle.distributed.launch stopped the other ranks"):
        d.report_failure(killed, 241)
    assert killed.exists()  # kept for a person to read
    user = run_dir(tmp_path, LAUNCH_LOG.format(code=2),
                   workerlog_1="noise\nerror: train: --data x: no such file\n")
    with pytest.raises(LlmcError, match=r"^train: --data x: no such file$"):
        d.report_failure(user, 2)
    assert not user.exists()  # a user error's logs say nothing more
    lost = run_dir(tmp_path, LAUNCH_LOG.format(code=-6).replace("rank 1", "rank 0"),
                   workerlog_0=(  # what rank 0 says when rank 1 vanishes
                       "RuntimeError: [/paddle/third_party/gloo/gloo/transport/tcp/pair.cc:584] "
                       "TIMEOUT self_rank = 0 pair_rank = 1 peer_str = [127.0.0.1]:41102\n"),
                   workerlog_1="step 3\n")  # SIGKILL leaves no last words
    with pytest.raises(LlmcError, match=r"^rank 1 died without a message \(killed: SIGKILL, "
                                        r"out of memory\?\); rank 0 lost its connection to it "
                                        r"\(killed by SIGABRT\)"):
        d.report_failure(lost, 250)
    with pytest.raises(LlmcError, match=r"paddle.distributed.launch failed \(exit code 1\)"):
        d.report_failure(run_dir(tmp_path, "LAUNCH INFO nothing about ranks\n"), 1)


def test_the_relay_copies_what_rank_0_appends(tmp_path, capsys):
    from llmc.distributed import Relay

    relay = Relay(tmp_path)
    relay.pump()  # nothing yet
    with (tmp_path / "console.out").open("w") as out:
        out.write("tok")
        out.flush()
        relay.pump()
        out.write("ens\n")
        (tmp_path / "console.err").write_text("timings\n")
    relay.close()
    assert capsys.readouterr() == ("tokens\n", "timings\n")
