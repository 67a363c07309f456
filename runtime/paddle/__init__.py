"""The Paddle runtime: llmc graphs lowered to Paddle dygraph calls (inference and training).

    program = PaddleProgram(graph, weights, device="cpu")   # cpu|gpu|npu|mlu|iluvatar_gpu
    logits = program.logits(input_ids)                     # numpy, no autograd
    lm = PaddleCacheLM(cache_form_graph, weights)          # engine contract (generation)
    lm = PaddlePagedLM(inference_form_graph, weights)      # ascend910b's paged form
    lm = PaddleRecomputeLM(full_form_graph, weights)       # no cache: recomputes each row
    trainer = Trainer(graph, weights, TrainConfig(lr=3e-4, total_steps=1000))
    metrics = trainer.step({"input_ids": ids, "labels": labels})
    state = trainer.state_dict(); Trainer(...).load_state_dict(state)  # resume

`graph` is a full-form graph returning every position's logits, optionally compiled by
a per-op target's pipeline (fused rms_norm, rope, attention, swiglu...). Batches of
unequal rows are right-padded with labels -100 on the padding: attention is causal, so
no real token sees the padding after it. `program.kernels.report()` says which Paddle
kernel each op kind ran with, and why. Paddle itself is imported on first use
(env.import_paddle), so importing this package works without paddlepaddle installed.
"""

from . import cache_ops, core_ops, inference_ops, nn_ops  # noqa: F401  (fill the lowering table)
from .cache_lm import PaddleCacheLM
from .env import DEVICES, Kernels, choose_kernels, import_paddle, place_for
from .lower import LOWERINGS, LoweringError, PaddleProgram, lower_ops
from .paged_lm import PaddlePagedLM
from .recompute_lm import PaddleRecomputeLM
from .schedule import SCHEDULES, lr_factor
from .train import TrainConfig, Trainer, TrainingError

__all__ = ["DEVICES", "LOWERINGS", "SCHEDULES", "Kernels", "LoweringError", "PaddleCacheLM",
           "PaddlePagedLM", "PaddleProgram", "PaddleRecomputeLM", "TrainConfig", "Trainer", "TrainingError",
           "choose_kernels", "import_paddle", "lower_ops", "lr_factor", "place_for"]
