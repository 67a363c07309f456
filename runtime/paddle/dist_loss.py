"""The vocabulary-parallel cross-entropy: the causal-LM loss on logits each tp rank holds
only its vocabulary slice of (`shard_tensor_parallel{gather_logits=false}`), as Megatron and
PaddleNLP's `ParallelCrossEntropy` compute it, so no rank builds the [tokens, vocab] logits.

Per token: logsumexp over the whole vocabulary = log(all_reduce_sum(sum(exp(l - m)))) + m,
where m is the all-reduced max (a constant for the gradient); the label's logit is summed from
the one rank whose slice holds it. Both sums are the all_reduce PyLayer (identity backward),
so each rank's slice gets exactly its own gradient: unlike the loss on gathered logits, no
division by tp is needed.
"""

from __future__ import annotations

import numpy as np

from .dist_ops import Comm, layer
from .train import shift_labels


def parallel_loss_sum(paddle, logits, labels: np.ndarray, comm: Comm, ignore_index: int):
    """(sum of the token losses over the whole vocabulary, count of unmasked tokens) from this
    rank's logits [b, s, vocab / tp] (rank r holds vocabulary rows r*vocab/tp ...)."""
    target = paddle.to_tensor(shift_labels(labels, ignore_index))
    valid = target != ignore_index
    rows = logits.shape[-1]
    local = target - comm.rank * rows
    mine = valid & (local >= 0) & (local < rows)
    safe = paddle.where(mine, local, paddle.zeros_like(local))
    with paddle.no_grad():
        m = comm.all_reduce_max(logits.max(axis=-1), "all_reduce (loss max)")
    all_reduce = layer("AllReduce")
    sum_exp = all_reduce.apply(paddle.exp(logits - m.unsqueeze(-1)).sum(axis=-1), comm)
    picked = paddle.take_along_axis(logits, safe.unsqueeze(-1), axis=-1).squeeze(-1)
    picked = all_reduce.apply(picked * mine.astype(logits.dtype), comm)
    token_loss = (paddle.log(sum_exp) + m - picked) * valid.astype(logits.dtype)
    return token_loss.sum(), int(valid.astype("int64").sum())
