"""Running an llmc command as the ranks of a tensor- (--tp) × data-parallel (--dp) job on
paddle.distributed, launched by Paddle's own launcher.

`llmc generate ART --tp N` and `llmc train MODEL --tp N --dp M` start their ranks
themselves: the command runs

    python -m paddle.distributed.launch --nproc_per_node N*M/K [--nnodes K --master IP:PORT]
        --log_dir RUN python -u -m llmc <the same command line>

and inside that launch (PADDLE_TRAINER_ID and PADDLE_TRAINERS_NUM set) the same command
line joins as one rank (`join`), so it can also run inside a launch the user started. On
several nodes, the same command runs on every node with `--nnodes K --master IP:PORT`,
passed to the launcher, which rendezvouses the nodes.

Console: rank 0 writes its stdout and stderr to RUN/console.out and RUN/console.err (the
launching command relays them as they grow, so text streams); the other ranks print
nothing; Paddle's own log lines and crash tracebacks stay in RUN/workerlog.N. Failure: when a rank exits with
an error or is killed, paddle.distributed.launch stops the others (it polls every 2 s and
gives them 3 s); the command then names the rank, how it ended and its log, and keeps RUN
(a temporary directory, removed after a clean run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr
from pathlib import Path

from llmc.compiler.errors import LlmcError

CONSOLE_ENV = "LLMC_DIST_CONSOLE"
FAILED = re.compile(r"Container rank (\d+) status failed .*? code (-?\d+)")
POLL_S = 0.05
# what a rank's log ends with when another rank vanished under it (gloo's transport errors:
# reset, broken pipe, TIMEOUT on the pair; NCCL's remote error), or the launcher stopped it
PEER_GONE = ("gloo/transport/", "gloo::IoException", "gloo::TimeoutException",
             "Connection reset by peer", "ncclRemoteError", "`Termination signal` is detected")


def launched() -> tuple[int, int] | None:
    """(rank, world size) when this process is a rank of a paddle.distributed launch."""
    from llmc.runtime.paddle.dist import launched_rank

    return launched_rank()


def procs_per_node(tp: int, dp: int, nnodes: int) -> int:
    """Ranks each node runs; refuses sizes that do not fit."""
    if tp < 1 or dp < 1 or nnodes < 1:
        raise LlmcError(f"--tp, --dp and --nnodes must be >= 1, got {tp}, {dp}, {nnodes}")
    if (tp * dp) % nnodes:
        raise LlmcError(f"--tp {tp} × --dp {dp} = {tp * dp} ranks do not divide over "
                        f"--nnodes {nnodes}")
    return tp * dp // nnodes


def launch_command(nproc: int, program: list[str], log_dir: Path, nnodes: int = 1,
                   master: str | None = None) -> list[str]:
    """paddle.distributed.launch running `program` (an argv) on `nproc` ranks here."""
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", str(log_dir)]
    if nnodes > 1 or master:
        if not master:
            raise LlmcError(f"--nnodes {nnodes}: give --master IP:PORT (the node that "
                            "rendezvouses the others)")
        cmd += ["--nnodes", str(nnodes), "--master", master]
    return cmd + program


def _rank_env(nproc: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    if device.partition(":")[0] == "cpu" and "OMP_NUM_THREADS" not in env:
        # ranks on one CPU share its cores; without this each would start a thread per core
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


class Relay:
    """Copies what rank 0 appends to RUN/console.out and .err to this process's streams."""

    def __init__(self, run_dir: Path):
        self.sources = [(run_dir / "console.out", lambda: sys.stdout),
                        (run_dir / "console.err", lambda: sys.stderr)]
        self.files: dict[Path, object] = {}

    def pump(self) -> None:
        """Copy whatever is new."""
        for path, stream in self.sources:
            f = self.files.get(path)
            if f is None:
                if not path.exists():
                    continue
                f = self.files[path] = path.open(encoding="utf-8", errors="replace")
            text = f.read()
            if text:
                stream().write(text)
                stream().flush()

    def close(self) -> None:
        """Copy the rest and close the files."""
        self.pump()
        for f in self.files.values():
            f.close()


def run_ranks(program: list[str], tp: int, dp: int = 1, nnodes: int = 1,
              master: str | None = None, device: str = "cpu") -> None:
    """Run `program` (an argv) as the tp × dp ranks through paddle.distributed.launch,
    relaying rank 0's console; a failed rank raises an LlmcError naming it (see module
    doc), a user error of rank 0 (exit 2, message already relayed) exits 2."""
    nproc = procs_per_node(tp, dp, nnodes)
    run_dir = Path(tempfile.mkdtemp(prefix="llmc-ranks-"))
    cmd = launch_command(nproc, program, run_dir, nnodes, master)
    env = _rank_env(nproc, device)
    env[CONSOLE_ENV] = str(run_dir)
    relay = Relay(run_dir)
    with (run_dir / "launch.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                relay.pump()
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # the launcher stops its ranks
            proc.wait()
            raise
        finally:
            relay.close()
    if proc.returncode == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    report_failure(run_dir, proc.returncode)


def how_it_ended(code: int) -> str:
    """'exit code 3' or 'killed by SIGKILL' for a process's exit status."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def failed_rank(launch_log: str) -> tuple[int, int] | None:
    """(rank, exit status) of the first rank the launcher reported failed."""
    m = FAILED.search(launch_log)
    return (int(m.group(1)), int(m.group(2))) if m else None


def rank_log(run_dir: Path, rank: int) -> str:
    """What rank `rank` of this node wrote: its log (rank 0: and its relayed stderr)."""
    paths = [run_dir / f"workerlog.{rank}"] + ([run_dir / "console.err"] if rank == 0 else [])
    return "".join(p.read_text(errors="replace") for p in paths if p.exists())


def lost_a_peer(log: str) -> bool:
    """Whether a rank's log shows it ended because another rank went away (its connection
    reset) or because the launcher stopped it."""
    return any(s in log for s in PEER_GONE)


def silent_death(run_dir: Path, failed: int) -> int | None:
    """A rank of this node that ended with nothing in its log (SIGKILL, the OOM killer),
    when the rank the launcher reported only lost its connection to it."""
    if not lost_a_peer(rank_log(run_dir, failed)):
        return None
    ranks = sorted(int(p.suffix[1:]) for p in run_dir.glob("workerlog.*") if p.suffix[1:].isdigit())
    quiet = [r for r in ranks if r != failed and not lost_a_peer(rank_log(run_dir, r))
             and "Traceback" not in rank_log(run_dir, r)]
    return quiet[0] if quiet else None


def report_failure(run_dir: Path, launcher_code: int) -> None:
    """Raise the error of a failed launch (see run_ranks)."""
    failed = failed_rank((run_dir / "launch.log").read_text(errors="replace"))
    if failed is None:
        raise LlmcError(f"paddle.distributed.launch failed ({how_it_ended(launcher_code)}); "
                        f"its log: {run_dir / 'launch.log'}")
    rank, code = failed
    console = run_dir / "console.err"
    printed = code == 2 and rank == 0 and console.exists() and console.stat().st_size
    user_error = _user_error(run_dir / f"workerlog.{rank}") if code == 2 else None
    if printed or user_error is not None:  # a user error: the logs have nothing more
        shutil.rmtree(run_dir, ignore_errors=True)
        if printed:
            raise SystemExit(2)  # rank 0 printed it already
        raise LlmcError(user_error)
    first = silent_death(run_dir, rank)
    if first is not None:
        raise LlmcError(f"rank {first} died without a message (killed: SIGKILL, out of "
                        f"memory?); rank {rank} lost its connection to it "
                        f"({how_it_ended(code)}); paddle.distributed.launch stopped the other "
                        f"ranks; logs: {run_dir}")
    tail = [ln for ln in rank_log(run_dir, rank).splitlines() if ln.strip()][-8:] \
        if code > 0 else []
    for line in tail:
        sys.stderr.write(f"  rank {rank}| {line}\n")
    raise LlmcError(f"rank {rank} failed ({how_it_ended(code)}); paddle.distributed.launch "
                    f"stopped the other ranks; logs: {run_dir}")


def _user_error(log: Path) -> str | None:
    """The `error: ...` line a rank printed before exiting 2 (an LlmcError), if any."""
    if not log.exists():
        return None
    errors = [ln for ln in log.read_text(errors="replace").splitlines()
              if ln.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else None


def redirect_console(rank: int) -> None:
    """Rank 0 prints to the files the launching command relays (when it set them up);
    the other ranks print nothing (their errors still reach their logs on stderr)."""
    console = os.environ.get(CONSOLE_ENV)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    elif console:
        sys.stdout = open(Path(console) / "console.out", "w", encoding="utf-8", buffering=1)
        sys.stderr = open(Path(console) / "console.err", "w", encoding="utf-8", buffering=1)
        # a crash's traceback goes to the rank's log: most are a peer's death seen from
        # here, and the launching command names the rank and shows the log's last lines
        sys.excepthook = lambda kind, value, tb: traceback.print_exception(
            kind, value, tb, file=sys.__stderr__)


def join(tp: int, dp: int = 1, device: str = "cpu"):
    """This process as one rank of a launched tp × dp job: its console redirected (rank 0
    prints), Paddle's process groups joined. Returns the runtime's World."""
    from llmc.runtime.paddle.dist import init_world

    here = launched()
    if here is not None:
        redirect_console(here[0])
    with redirect_stderr(sys.__stderr__):  # Paddle's banners go to the rank's log
        return init_world(tp, dp, device)


def launch_or_join(tp: int, dp: int = 1, nnodes: int = 1, master: str | None = None,
                   device: str = "cpu"):
    """For a command run with --tp/--dp: None when there is one rank and no launch (run as
    usual); the World when this process is a launched rank; otherwise launch the ranks on
    this same command line, wait for them, and return False (the command is done)."""
    procs_per_node(tp, dp, nnodes)
    if launched() is not None:
        return join(tp, dp, device)
    if tp * dp == 1 and nnodes == 1:
        return None
    run_ranks([sys.executable, "-u", "-m", "llmc", *sys.argv[1:]], tp, dp, nnodes, master,
              device)
    return False


# ---- generation -------------------------------------------------------------------------


def artifact_graph(art, tp: int):
    """The graph a rank of `--tp` runs for `art`: its own when compiled with --tp N; for an
    unsharded artifact, the same target and form compiled again from its checkpoint with
    --tp N (in memory: nothing is written)."""
    from llmc.runtime.simulate import group_size

    made_for = group_size(art.graph)
    if made_for == tp:
        return art.graph
    if made_for != 1:
        raise LlmcError(f"{art.path}: compiled for --tp {made_for}, not --tp {tp}")
    from llmc.compile import compile_model
    from llmc.passes.pipelines import Parallel

    report = art.report
    return compile_model(art.manifest["model_dir"], report["target"], report.get("form"),
                         parallel=Parallel(tp=tp)).graph


def ranked_model(art, world):
    """The artifact as one rank's `CausalLM` (cache form: the engine's KV cache contract;
    inference form: the paged cache; full form: recomputing the sequence)."""
    from llmc.runtime.paddle import PaddleCacheLM, PaddlePagedLM
    from llmc.runtime.paddle.dist_program import DistProgram
    from llmc.runtime.recompute import RecomputeLM
    from llmc.runtimes import max_positions

    graph, weights = artifact_graph(art, world.tp), art.weights()
    limit = max_positions(art.report.get("config", {}))
    program = DistProgram(graph, weights, world, trainable=False)
    form = art.report.get("form")
    if form == "cache":
        return PaddleCacheLM(graph, weights, max_positions=limit, program=program)
    if form == "inference":
        return PaddlePagedLM(graph, weights, program=program)
    lm = RecomputeLM(program.logits, int(graph.outputs[0].type.shape[-1]), limit)
    lm.kernels = program.kernels  # the report --json gives
    return lm
