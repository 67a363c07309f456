"""Training throughput: llmc's Paddle runtime (the full-form graph, runtime/paddle Trainer)
vs torch eager (transformers' LlamaForCausalLM), same weights, same batches, AdamW, fp32.

    python benchmarks/train.py [--hidden 768 --layers 12 --heads 12 --kv-heads 12
        --inter 2048 --vocab 32000] [--batch 4 --seq 256] [--steps 3] [--out results/]

The default dims are the 134M llama config. Steps alternate between the two (one warmup
step each, then `--steps` timed), so both see the same machine load. Prints each side's
tokens/s (median step), the ratio, and both loss curves (they must agree: the same run),
and writes benchmarks/results/train-<dims>.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from peers.checkpoint import dims_config as config  # benchmarks/ is the script dir



def llmc_side(cfg: dict, weights: dict, a):
    """A step function on llmc's Paddle Trainer, and its kernel report."""
    from llmc.compile import build_graph
    from llmc.frontends.config import parse_config
    from llmc.frontends.naming import naming_for
    from llmc.runtime.paddle import TrainConfig, Trainer

    mc = parse_config(cfg)
    g = build_graph(mc, naming_for(mc.source_format), "full", last_token_only=False)
    if a.target:
        from llmc import api
        from llmc.compile import model_facts
        from llmc.compiler.passmanager import PassContext
        from llmc.passes.pipelines import pipeline_for

        api.run_pipeline(g, pipeline_for(a.target),
                         ctx=PassContext(model=model_facts(mc, "full")))
    trainer = Trainer(g, weights, TrainConfig(lr=a.lr, weight_decay=0.01, schedule="constant",
                                              total_steps=a.steps + 1, max_grad_norm=1.0))
    return (lambda ids: trainer.step({"input_ids": ids})["loss"]), trainer


def profile(trainer, ids: np.ndarray) -> tuple[dict, list[tuple[str, float]]]:
    """llmc's step split into forward / backward / optimizer seconds, and the forward's
    seconds per op kind (ops run one by one, as PaddleProgram runs them)."""
    from collections import defaultdict

    paddle, program = trainer.paddle, trainer.program
    t0 = time.perf_counter()
    loss, count = trainer.loss_sum(ids, ids)
    t1 = time.perf_counter()
    (loss / count).backward()
    t2 = time.perf_counter()
    trainer.optimizer.step()
    trainer.optimizer.clear_grad()
    t3 = time.perf_counter()
    phases = {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}
    x = paddle.to_tensor(ids)
    env = {v: program.params[v.name] for v in program.graph.params.values()}
    env.update({program.graph.inputs[0]: x, program.graph.inputs[1]: paddle.arange(
        ids.shape[1], dtype="int64").unsqueeze(0).expand(x.shape)})
    per_kind: dict[str, float] = defaultdict(float)
    for op, step in program.steps:
        t = time.perf_counter()
        env.update(zip(op.outputs, step(env)))
        per_kind[op.kind] += time.perf_counter() - t
    return phases, sorted(per_kind.items(), key=lambda kv: -kv[1])


def torch_side(cfg: dict, weights: dict, a):
    """A step function on transformers + torch eager with the same weights and optimizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**cfg)).float().train()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=a.lr, eps=1e-8)

    def step(ids):
        t = torch.as_tensor(ids)
        loss = model(input_ids=t, labels=t).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.item()

    return step


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 0.02) fp32 weights (norms at 1) for every parameter, by HF name."""
    from llmc.compile import build_graph
    from llmc.frontends.config import parse_config
    from llmc.frontends.naming import naming_for

    mc = parse_config(cfg)
    g = build_graph(mc, naming_for(mc.source_format), "full", last_token_only=False)
    rng = np.random.default_rng(seed)
    return {n: (np.ones(p.type.shape, np.float32) if p.type.rank == 1 else
                rng.standard_normal(p.type.shape, np.float32) * 0.02)
            for n, p in g.params.items()}


def run(a) -> dict:
    """Alternate llmc and torch steps on the same batches; tokens/s per side."""
    cfg = config(a)
    weights = random_weights(cfg)
    ours, trainer = llmc_side(cfg, weights, a)
    theirs = torch_side(cfg, weights, a)
    rng = np.random.default_rng(1)
    times: dict[str, list[float]] = {"llmc-paddle": [], "torch": []}
    losses: dict[str, list[float]] = {"llmc-paddle": [], "torch": []}
    for i in range(a.steps + 1):
        ids = rng.integers(0, a.vocab, (a.batch, a.seq))
        for name, fn in (("llmc-paddle", ours), ("torch", theirs)):
            t0 = time.perf_counter()
            losses[name].append(fn(ids))
            if i:  # the first step of each is warmup
                times[name].append(time.perf_counter() - t0)
            print(f"step {i} {name:12s} loss {losses[name][-1]:.6f}  "
                  f"{time.perf_counter() - t0:.2f} s", flush=True)
    tokens = a.batch * a.seq
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    phases, per_op = profile(trainer, rng.integers(0, a.vocab, (a.batch, a.seq)))
    return {"tok_s": tps, "ratio": tps["llmc-paddle"] / tps["torch"], "losses": losses,
            "kernels": trainer.program.kernels.report(), "phases": phases, "per_op": per_op}


def write_note(a, r: dict, out: Path) -> Path:
    """benchmarks/results/train-<dims>.md with the numbers and the settings."""
    import paddle
    import torch

    dims = f"h{a.hidden}-l{a.layers}-v{a.vocab}" + (f"-{a.target}" if a.target else "")
    path = out / f"train-{dims}.md"
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in r["tok_s"].items())
    ops = "\n".join(f"| {k} | {v:.3f} |" for k, v in r["per_op"][:12])
    curves = "\n".join(f"| {i} | {x:.6f} | {y:.6f} |" for i, (x, y) in
                       enumerate(zip(r["losses"]["llmc-paddle"], r["losses"]["torch"])))
    path.write_text(f"""# Training throughput: llmc on Paddle vs torch eager

`python benchmarks/train.py --hidden {a.hidden} --layers {a.layers} --heads {a.heads} \\
--kv-heads {a.kv_heads} --inter {a.inter} --vocab {a.vocab} --batch {a.batch} --seq {a.seq} \\
--steps {a.steps}{' --target ' + a.target if a.target else ''}` on {platform.machine()} ({os.cpu_count()} cores), paddle {paddle.__version__},
torch {torch.__version__}; fp32, AdamW (wd 0.01, clip 1.0), batch {a.batch} x {a.seq},
random weights, steps alternating between the two, median of {a.steps} timed steps.

| runtime | tokens/s |
|---|---|
{rows}

**llmc-paddle / torch eager = {r['ratio']:.2f}x**

llmc's graph: {'the ' + a.target + " pipeline's compiled full form" if a.target else
               'the uncompiled full form'}; kernels chosen: {r['kernels'] or 'composites only'}

Profile of one more llmc step (seconds): {', '.join(f'{k} {v:.2f}' for k, v in
                                            r['phases'].items())}; forward by op kind:

| op | seconds |
|---|---|
{ops}

Loss per step (same weights and batches: the curves agree):

| step | llmc-paddle | torch |
|---|---|---|
{curves}
""")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("hidden", 768), ("layers", 12), ("heads", 12), ("kv-heads", 12),
                          ("inter", 2048), ("vocab", 32000), ("batch", 4), ("seq", 256),
                          ("steps", 3)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--target", default=None, help="compile llmc's full-form graph with this "
                   "per-op target's pipeline (fused kernels) first")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args()
    r = run(a)
    for k, v in r["tok_s"].items():
        print(f"{k:12s} {v:8.1f} tok/s")
    print(f"ratio llmc-paddle / torch eager: {r['ratio']:.2f}x")
    print(f"wrote {write_note(a, r, a.out)}")


if __name__ == "__main__":
    main()
