"""One rank of the toy model's distributed runs (launched by tests/test_dist_runtime.py
through paddle.distributed.launch, 2 processes): TP=2 (plain, sequence parallel, MC2,
MC2 on a stand-in NPU kernel) logits, greedy tokens, a training step with clipping, a
resume from the gathered state; DP=2 on each rank's half of the batch. Writes
OUT/rank<r>.npz (arrays) and OUT/rank<r>.json (metrics, collective logs, kernels)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import dist_toy as toy  # noqa: E402

from llmc.runtime.paddle import TrainConfig  # noqa: E402
from llmc.runtime.paddle import dist_mc2, dist_program  # noqa: E402
from llmc.runtime.paddle.dist import init_world  # noqa: E402
from llmc.runtime.paddle.dist_train import DistTrainer  # noqa: E402

CONFIG = dict(lr=1e-2, max_grad_norm=0.05, schedule="constant", total_steps=10)
GREEDY = 5


def greedy(program, ids):
    """GREEDY tokens appended to each row by argmax of the last position's logits."""
    ids = np.asarray(ids)
    for _ in range(GREEDY):
        nxt = program.logits(ids)[:, -1].argmax(-1)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ids[:, -GREEDY:]


def tensor_parallel(world, name, graph, arrays, doc, resume=False):
    """Forward, greedy, one step and (resume) a step after loading the gathered state."""
    b, w = toy.batch(0), toy.weights()
    trainer = DistTrainer(graph, w, TrainConfig(**CONFIG), world)
    arrays[f"{name}/logits"] = trainer.program.logits(b["input_ids"])
    if not name.startswith("sp"):  # sequence parallel needs seq divisible by tp
        arrays[f"{name}/greedy"] = greedy(trainer.program, b["input_ids"][:, :3])
    world.comm.reset()
    m = trainer.step(b)
    doc[f"{name}/step_comm"] = world.comm.summary()
    doc[f"{name}/metrics"] = {k: m[k] for k in ("loss", "grad_norm", "tokens")}
    doc[f"{name}/kernels"] = trainer.describe()["kernels"]
    state = trainer.state_dict()
    for k, v in state["weights"].items():
        arrays[f"{name}/w/{k}"] = v
    for k, v in state["optimizer"].items():
        if isinstance(v, np.ndarray):
            arrays[f"{name}/opt/{k}"] = v
    if resume:
        again = DistTrainer(graph, toy.weights(seed=9), TrainConfig(**CONFIG), world)
        again.load_state_dict(state)
        doc[f"{name}/resumed_loss"] = again.step(toy.batch(1))["loss"]
        world.comm.reset()
        with again.paddle.no_grad():
            again.program.logits(b["input_ids"][:1, :1])
        doc[f"{name}/decode_comm"] = world.comm.summary()


def fake_npu(world):
    """MC2 through the fused-kernel path, on a stand-in for paddle-custom-npu's kernel."""
    import paddle

    def fused_mm_allreduce(x, w, bias=None, hcom=None, reduce_op="sum", comm_turn=0):
        assert hcom == "stand-in" and reduce_op == "sum" and bias is None
        y = paddle.matmul(x, w)
        paddle.distributed.all_reduce(y, group=world.groups["tp"])
        return y

    dist_mc2.fused_kernel = lambda: fused_mm_allreduce
    dist_mc2.comm_name = lambda comm: "stand-in"
    choose = dist_program.choose_kernels
    dist_program.choose_kernels = lambda device, **kw: choose("npu", **kw)
    return lambda: setattr(dist_program, "choose_kernels", choose)


def data_parallel(world, arrays, doc):
    """Rank r trains on its half of the rows of the batch the reference takes whole."""
    b = toy.batch(0)
    half = {k: np.array_split(v, 2)[world.dp_rank] for k, v in b.items()}
    trainer = DistTrainer(toy.graphs()["full"], toy.weights(), TrainConfig(**CONFIG), world)
    m = trainer.step(half)
    doc["dp/metrics"] = {k: m[k] for k in ("loss", "grad_norm", "tokens")}
    for k, v in trainer.state_dict()["weights"].items():
        arrays[f"dp/w/{k}"] = v


def main(out: Path) -> None:
    world = init_world(2, 1, "cpu")
    arrays, doc = {}, {}
    graphs = toy.graphs()
    for name in ("tp", "sp", "tp_mc2", "sp_mc2"):
        tensor_parallel(world, name, graphs[name], arrays, doc, resume=name == "tp")
    restore = fake_npu(world)
    tensor_parallel(world, "npu_mc2", graphs["tp_mc2"], arrays, doc)
    restore()
    data_parallel(init_world(1, 2, "cpu"), arrays, doc)
    np.savez(out / f"rank{world.rank}.npz", **arrays)
    (out / f"rank{world.rank}.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
