"""One rank of the tiny fixtures sharded by shard_tensor_parallel{tp=2} (launched by
tests/test_dist_tp.py, 2 processes): full-form logits and a training step (clipping,
recompute; sequence parallel; Baichuan's W_pack with ALiBi; PaddleNLP's fused qkv_proj),
and greedy decoding of the cache form with each rank's KV heads. Writes OUT/rank<r>.npz
and OUT/rank<r>.json."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from llmc.compile import build_graph
from llmc.distributed_train import shard_graph
from llmc.frontends.config import parse_config
from llmc.frontends.fixture_configs import paddle_config
from llmc.frontends.fixture_weights import paddlenlp_weights
from llmc.frontends.fixtures import random_weights, tiny_config
from llmc.frontends.naming import PADDLE, naming_for
from llmc.runtime.paddle import PaddleCacheLM, TrainConfig

# eps 1e-3: AdamW's first step is then a smooth function of the gradient (with 1e-8 it is
# lr * sign(g), which turns a 1e-7 difference in a gradient that cancels to ~1e-8 into lr)
CONFIG = dict(lr=1e-2, eps=1e-3, max_grad_norm=0.5, schedule="constant", total_steps=10)
RUNS = {  # name: (arch, layout, sequence parallel, recompute)
    "llama_gqa": ("llama_gqa", "hf", False, False),
    "llama_gqa_sp": ("llama_gqa", "hf", True, True),
    "baichuan2_13b": ("baichuan2_13b", "hf", False, False),
    "llama_fused_qkv": ("llama", "paddle-fused", False, False),
}
DECODE = ["llama_gqa", "baichuan2_13b"]
NEW_TOKENS = 6


def model(arch: str, layout: str, form: str):
    """(config, graph of `form`, weights) of a tiny fixture in an HF or PaddleNLP layout."""
    if layout == "hf":
        cfg = parse_config(tiny_config(arch))
        naming, w = naming_for(cfg.source_format), random_weights(arch, seed=0)
    else:
        cfg = parse_config(paddle_config(arch, fuse_qkv=True))
        naming = dataclasses.replace(PADDLE, fused_qkv=True)
        w = paddlenlp_weights(arch, seed=0, fuse_qkv=True)
    g = build_graph(cfg, naming, form, last_token_only=False)
    return cfg, g, {k: w[k] for k in g.params}


def batch(cfg) -> dict:
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8))
    labels = ids.copy()
    labels[0, :3] = -100
    return {"input_ids": ids, "labels": labels}


def greedy(lm, prompt: np.ndarray) -> np.ndarray:
    """NEW_TOKENS greedy tokens of one prompt through the engine's cache contract."""
    cache = lm.new_cache(1, len(prompt) + NEW_TOKENS)
    logits = lm.forward(cache, [0], prompt[None], np.array([0]))
    out = []
    for _ in range(NEW_TOKENS):
        out.append(int(logits[0].argmax()))
        logits = lm.forward(cache, [0], np.array([[out[-1]]]),
                            np.array([len(prompt) + len(out) - 1]))
    return np.array(out)


def main(out: Path) -> None:
    from llmc.runtime.paddle.dist import init_world
    from llmc.runtime.paddle.dist_program import DistProgram
    from llmc.runtime.paddle.dist_train import DistTrainer

    world = init_world(2, 1, "cpu")
    arrays, doc = {}, {}
    for name, (arch, layout, sp, recompute) in RUNS.items():
        cfg, g, w = model(arch, layout, "full")
        shard_graph(g, 2, sequence_parallel=sp)
        trainer = DistTrainer(g, w, TrainConfig(**CONFIG, recompute=recompute), world)
        b = batch(cfg)
        arrays[f"{name}/logits"] = trainer.program.logits(b["input_ids"])
        m = trainer.step(b)
        doc[name] = {k: m[k] for k in ("loss", "grad_norm", "collectives")}
        for k, v in trainer.state_dict()["weights"].items():
            arrays[f"{name}/w/{k}"] = v
    for name in DECODE:
        arch, layout, _, _ = RUNS[name]
        cfg, g, w = model(arch, layout, "cache")
        shard_graph(g, 2)
        lm = PaddleCacheLM(g, w, program=DistProgram(g, w, world, trainable=False))
        arrays[f"{name}/greedy"] = greedy(lm, batch(cfg)["input_ids"][0, :5])
    np.savez(out / f"rank{world.rank}.npz", **arrays)
    (out / f"rank{world.rank}.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
