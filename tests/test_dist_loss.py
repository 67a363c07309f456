"""The vocabulary-parallel cross-entropy (runtime/paddle/dist_loss.py) on one rank is the
trainer's loss, value and gradient; on two ranks it runs in tests/test_dist_cli.py (llmc
train --tp 2 equals one process)."""

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from llmc.runtime.paddle.dist_loss import parallel_loss_sum  # noqa: E402
from llmc.runtime.paddle.dist_ops import Comm  # noqa: E402
from llmc.runtime.paddle.train import shift_labels, shifted_loss_sum  # noqa: E402


def test_shift_labels_predicts_the_next_token():
    assert shift_labels(np.array([[5, 6, 7]]), -100).tolist() == [[6, 7, -100]]


def test_one_rank_equals_the_trainer_loss_and_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(2, 5))
    labels[0, 2] = -100
    results = []
    for fn in (lambda x: parallel_loss_sum(paddle, x, labels, Comm(paddle, None, None, 1), -100),
               lambda x: shifted_loss_sum(paddle, x, labels, -100)):
        x = paddle.to_tensor(logits, stop_gradient=False)
        total, count = fn(x)
        total.backward()
        results.append((float(total), count, x.grad.numpy()))
    (a, ca, ga), (b, cb, gb) = results
    assert ca == cb == 7
    assert a == pytest.approx(b, rel=1e-6)
    np.testing.assert_allclose(ga, gb, atol=1e-6)
