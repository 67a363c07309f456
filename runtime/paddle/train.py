"""Training steps on a full-form graph lowered to Paddle: causal-LM loss with label masking,
AdamW (paddle.optimizer.AdamW), warmup + cosine/linear/constant schedules, gradient
clipping by global norm, gradient accumulation, activation recompute per decoder layer
(segments.py), dropout on chosen linears' inputs (train_rng.py), bf16 autocast where the
device has bf16 kernels, a seed, and the random generators' state in `state_dict()`.

    trainer = Trainer(graph, weights, TrainConfig(lr=3e-4, total_steps=1000))
    metrics = trainer.step({"input_ids": ids, "labels": labels})  # one optimizer update

`graph` must return logits for every position (frontends' build_full, or compile's
build_graph(..., "full", last_token_only=False), optionally through a per-op target's
pipeline). Labels follow transformers: aligned with input_ids, shifted inside (token t
predicts label t + 1), -100 (`ignore_index`) masks a position; without labels the
input_ids are the labels. The loss is the mean over the batch's unmasked tokens,
whatever the accumulation split. A batch may carry `position_ids` (default 0..seq-1 per
row) and, for a graph with a `segment_ids` input (packed rows), `segment_ids`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph

from .lower import PaddleProgram
from .schedule import SCHEDULES, lr_factor
from .train_rng import apply_input_dropout, check_rates, rng_state, set_rng_state

DTYPES = ("float32", "bfloat16")
GRAPH_INPUTS = ({"input_ids", "position_ids"}, {"input_ids", "position_ids", "segment_ids"})


class TrainingError(LlmcError):
    """A training run that cannot go on (bad config, non-finite loss)."""


@dataclass
class TrainConfig:
    """Optimizer, schedule and step settings. Weight decay applies to matrices (rank >= 2:
    linears, embeddings), not to norm weights or biases, as transformers' Trainer does."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    accumulation_steps: int = 1
    dtype: str = "float32"
    seed: int = 0
    device: str = "cpu"
    ignore_index: int = -100
    recompute: bool = False
    # parameter name -> dropout rate on the input of the linear reading it (training only)
    input_dropout: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse settings that cannot train, naming the field."""
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                                f"got '{self.schedule}'")
        if self.dtype not in DTYPES:
            raise TrainingError(f"dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.accumulation_steps < 1 or self.total_steps < 1 or self.warmup_steps < 0:
            raise TrainingError("accumulation_steps and total_steps must be >= 1, "
                                "warmup_steps >= 0")
        if self.lr <= 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise TrainingError("lr and max_grad_norm must be positive")
        check_rates(self.input_dropout)

    def autocast_args(self) -> dict:
        """The arguments of paddle.amp.auto_cast for this config's dtype (bf16: O1, matmuls
        and other white-listed ops in bfloat16, the rest float32)."""
        return {"enable": self.dtype == "bfloat16", "dtype": "bfloat16", "level": "O1"}

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return self.lr * lr_factor(step, schedule=self.schedule, warmup_steps=self.warmup_steps,
                                   total_steps=self.total_steps, min_lr_ratio=self.min_lr_ratio)


def check_training_graph(graph: Graph) -> None:
    """A training graph takes input_ids and position_ids and returns logits for every one."""
    names = {v.name: v for v in graph.inputs}
    if set(names) not in GRAPH_INPUTS:
        raise TrainingError(f"graph @{graph.name} is not a full-form graph (inputs input_ids, "
                            "position_ids[, segment_ids])")
    logits = graph.outputs[0].type.shape
    if len(logits) != 3 or logits[1] != names["input_ids"].type.shape[1]:
        raise TrainingError(f"graph @{graph.name} returns logits {list(logits)}, not one row per "
                            "input position; build the full form with last_token_only=False")


def bf16_unavailable(paddle, autocast_args: dict) -> str | None:
    """None when auto_cast (with `autocast_args`) runs a matmul in bfloat16 on the current
    device; else why not, as measured here with a 2x2 matmul (Paddle's own warning, and
    whether the build has a bfloat16 matmul kernel for the device at all)."""
    x = paddle.ones([2, 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with paddle.amp.auto_cast(**{**autocast_args, "enable": True}):
            if paddle.matmul(x, x).dtype == paddle.bfloat16:
                return None
    said = [str(w.message).rstrip(".") for w in caught if "amp" in str(w.message)]
    try:
        paddle.matmul(x.astype("bfloat16"), x.astype("bfloat16"))
        kernel = "a bfloat16 matmul does run when called directly"
    except Exception:  # Paddle's NotFound: no kernel registered for the dtype
        kernel = "this build registers no bfloat16 matmul kernel for the device either"
    return (f"Paddle {paddle.__version__}'s auto_cast(dtype='bfloat16') leaves matmuls in "
            f"float32 here ({'; '.join(said + [kernel])})")


def shift_labels(labels, ignore_index: int) -> np.ndarray:
    """labels[:, 1:] with one ignored column at the end: position t predicts label t + 1."""
    labels = np.asarray(labels, dtype=np.int64)
    tail = np.full((len(labels), 1), ignore_index, dtype=np.int64)
    return np.concatenate([labels[:, 1:], tail], axis=1)


def shifted_loss_sum(paddle, logits, labels, ignore_index: int):
    """(sum of the token losses, count of unmasked tokens): position t's logits against
    label t + 1. The labels are shifted (the last position gets `ignore_index`) rather than
    the logits sliced, and the loss is Paddle's fused softmax-cross-entropy: slicing the
    [b, s, vocab] logits and a logsumexp + take_along_axis composite cost 1.4 s of a 7.7 s
    134M step on CPU (the slice's backward alone 0.5 s), cross_entropy 0.12 s."""
    shifted = shift_labels(labels, ignore_index)
    target = paddle.to_tensor(shifted).unsqueeze(-1)
    loss = paddle.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index,
                                              reduction="sum")
    # The fused kernel can return a finite loss from NaN logits (seen at vocab 256: the
    # uniform ln(vocab)); a plain sum (11 ms here) does carry a NaN or inf through.
    if not math.isfinite(float(logits.detach().sum())):
        loss = loss * float("nan")
    return loss, int((shifted != ignore_index).sum())


def known_norm_clip(paddle, clip_norm: float, norm):
    """paddle's ClipGradByGlobalNorm, with the global norm `norm()` that the step has
    already taken (Trainer.grad_norm) instead of a second pass over the gradients, and no
    multiply when nothing is clipped (a 0.17 s pass over 134M gradients on 2 CPU cores)."""

    class KnownNormClip(paddle.nn.ClipGradByGlobalNorm):
        def _dygraph_clip(self, params_grads):
            scale = self.clip_norm / max(norm(), self.clip_norm)
            if scale == 1.0:
                return params_grads
            # in place, as Paddle's own clip does (a new 134M-float buffer costs more)
            return [(p, g if g is None or getattr(p, "need_clip", True) is False
                     else g.scale_(scale)) for p, g in params_grads]

    return KnownNormClip(clip_norm)


class Trainer:
    """One optimizer update per `step(batch)` on a graph's weights, in Paddle dygraph."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray], config: TrainConfig,
                 program: PaddleProgram | None = None):
        config.check()
        check_training_graph(graph)
        self.config = config
        self.program = program or PaddleProgram(graph, weights, device=config.device)
        self.paddle = paddle = self.program.paddle
        if config.dtype == "bfloat16":
            why = bf16_unavailable(paddle, config.autocast_args())
            if why:
                raise TrainingError(f"dtype bfloat16 on {config.device}: {why}; train in "
                                    "float32 there")
        self.inputs = {v.name for v in graph.inputs}
        self._dropout_on = False
        apply_input_dropout(self.program, config.input_dropout, lambda: self._dropout_on)
        paddle.seed(config.seed)
        params = self.program.parameters()
        decayed = {p.name for p in params if p.ndim >= 2}
        self._norm = 0.0
        clip = (known_norm_clip(paddle, config.max_grad_norm, lambda: self._norm)
                if config.max_grad_norm is not None else None)
        from paddle.base import unique_name

        # Accumulator names come from a process-wide counter (`w_moment1_0`, then `_1` for a
        # second optimizer); a generator of our own keeps them the same in every run, so a
        # saved optimizer state loads into a new Trainer.
        self._names = unique_name.UniqueNameGenerator()
        self._name_guard = lambda: unique_name.guard(self._names)
        with self._name_guard():
            self.optimizer = paddle.optimizer.AdamW(
                learning_rate=config.lr_at(0), parameters=params, beta1=config.beta1,
                beta2=config.beta2, epsilon=config.eps, weight_decay=config.weight_decay,
                apply_decay_param_fun=lambda name: name in decayed, grad_clip=clip)
        self.step_count = 0

    def loss_sum(self, input_ids, labels, position_ids=None, segment_ids=None):
        """(sum of the token losses, count of unmasked tokens) of one micro-batch, with the
        training step's dropout on."""
        p = self.paddle
        ids = p.to_tensor(np.asarray(input_ids, dtype=np.int64))
        pos = (p.arange(ids.shape[1], dtype="int64").unsqueeze(0).expand(ids.shape)
               if position_ids is None else p.to_tensor(np.asarray(position_ids, np.int64)))
        inputs = {"input_ids": ids, "position_ids": pos}
        if ("segment_ids" in self.inputs) != (segment_ids is not None):
            raise TrainingError("segment_ids must be given exactly when the graph takes them "
                                "(a packed-batch graph)")
        if segment_ids is not None:
            inputs["segment_ids"] = p.to_tensor(np.asarray(segment_ids, dtype=np.int64))
        self._dropout_on = True
        try:
            with p.amp.auto_cast(**self.config.autocast_args()):
                logits = self.program(inputs, recompute=self.config.recompute)[0]
        finally:
            self._dropout_on = False
        return self.loss_of(logits.astype("float32"), labels)

    def loss_of(self, logits, labels):
        """(sum of the token losses, count of unmasked tokens) of the graph's logits."""
        return shifted_loss_sum(self.paddle, logits, labels, self.config.ignore_index)

    def step(self, batch: Mapping[str, np.ndarray]) -> dict:
        """One optimizer update on `batch` ({"input_ids": [b, s], "labels"?: [b, s]}), split
        into `accumulation_steps` micro-batches of rows; returns the step's metrics."""
        t0 = time.perf_counter()
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        labels = np.asarray(batch.get("labels", ids), dtype=np.int64)
        if ids.ndim != 2 or labels.shape != ids.shape:
            raise TrainingError(f"input_ids must be [batch, seq] and labels the same shape, got "
                                f"{list(ids.shape)} and {list(labels.shape)}")
        total = int((labels[:, 1:] != self.config.ignore_index).sum())
        if total == 0:
            raise TrainingError("the batch has no unmasked label (every label is ignore_index)")
        lr = self.config.lr_at(self.step_count)
        self.optimizer.set_lr(lr)
        extra = {k: np.asarray(batch[k], dtype=np.int64) for k in ("position_ids", "segment_ids")
                 if batch.get(k) is not None}
        loss = 0.0
        for rows in np.array_split(np.arange(len(ids)), min(self.config.accumulation_steps,
                                                             len(ids))):
            part, _ = self.loss_sum(ids[rows], labels[rows],
                                    **{k: v[rows] for k, v in extra.items()})
            part = part / total
            part.backward()
            loss += float(part)
        if not math.isfinite(loss):
            self.optimizer.clear_grad()
            raise TrainingError(f"loss is {loss} at step {self.step_count + 1}; stopping "
                                "(weights not updated)")
        norm = self._norm = self.grad_norm()
        with self._name_guard():
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.step_count += 1
        dt = time.perf_counter() - t0
        return {"step": self.step_count, "loss": loss, "lr": lr, "grad_norm": norm,
                "tokens": int(ids.size), "seconds": dt, "tokens_per_s": ids.size / dt}

    def grad_norm(self) -> float:
        """The global L2 norm of the gradients (before clipping)."""
        from paddle import _C_ops  # squared_l2_norm: the kernel Paddle's own clip runs

        sq = [_C_ops.squared_l2_norm(g) for g in (p.grad for p in self.program.parameters())
              if g is not None]
        # one read back for all parameters, summed in float64
        return math.sqrt(float(self.paddle.concat(sq).astype("float64").sum())) if sq else 0.0

    def state_dict(self) -> dict:
        """What resuming needs, as numpy: {"step", "weights" (by graph name), "optimizer"
        (AdamW moments and beta powers by Paddle's accumulator names), "rng" (the random
        generators, JSON-ready: train_rng.rng_state)}."""
        opt = {k: v.numpy() if isinstance(v, self.paddle.Tensor) else v
               for k, v in self.optimizer.state_dict().items()}
        return {"step": self.step_count, "weights": self.program.state_dict(), "optimizer": opt,
                "rng": rng_state(self.paddle)}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from `state_dict()` of a Trainer of the same graph (before any step)."""
        if self.step_count:
            raise TrainingError("load_state_dict: this trainer has already stepped")
        missing = set(self.program.params) ^ set(state["weights"])
        if missing:
            raise TrainingError(f"load_state_dict: the state is of another model (parameter "
                                f"{sorted(missing)[0]} differs)")
        for name, arr in state["weights"].items():
            self.program.params[name].set_value(np.asarray(arr))
        self.optimizer.set_state_dict({k: self.paddle.to_tensor(v) if isinstance(v, np.ndarray)
                                       else v for k, v in state["optimizer"].items()})
        self.step_count = int(state["step"])
        if state.get("rng") is not None:
            set_rng_state(self.paddle, state["rng"])

    def describe(self) -> dict:
        """The config and the kernels used, for logs and metrics files."""
        return {"config": asdict(self.config), "kernels": self.program.kernels.report(),
                "device": str(self.program.place)}
