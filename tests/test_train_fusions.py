"""`llmc train` trains the per-op fused full form (llmc/training.py TRAINING_FUSIONS): one
AdamW step on it gives the unfused graph's loss, gradient norm and weights."""

import numpy as np
import pytest

pytest.importorskip("paddle")

from llmc.compile import build_graph  # noqa: E402
from llmc.frontends import fixtures  # noqa: E402
from llmc.frontends.loader import open_checkpoint  # noqa: E402
from llmc.runtime.paddle import TrainConfig, Trainer  # noqa: E402
from llmc.training import fuse_for_training  # noqa: E402


@pytest.mark.parametrize("arch", ["llama_gqa", "baichuan2_13b"])
def test_a_step_on_the_fused_graph_equals_the_unfused(tmp_path, arch):
    ckpt = open_checkpoint(fixtures.write_fixture(tmp_path / "m", arch))
    graphs = [build_graph(ckpt.config, ckpt.naming, "full", last_token_only=False)
              for _ in range(2)]
    fuse_for_training(graphs[1], ckpt.config)
    kinds = {op.kind for op in graphs[1].ops}
    assert {"attention", "swiglu", "add_rms_norm"} <= kinds, kinds
    ids = np.random.default_rng(0).integers(0, ckpt.config.vocab_size, size=(2, 12))
    results = []
    for g in graphs:
        weights = {n: np.asarray(ckpt.weights[n], np.float32) for n in g.params}
        t = Trainer(g, weights, TrainConfig(lr=1e-3, total_steps=1, eps=1e-3))
        results.append((t.step({"input_ids": ids}), t.program.state_dict()))
    (a, wa), (b, wb) = results
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], atol=1e-5, err_msg=name)
