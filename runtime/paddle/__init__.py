"""The Paddle runtime: llmc graphs lowered to Paddle dygraph calls (inference and training).

Paddle itself is imported on first use (env.import_paddle), so importing this package
works without paddlepaddle installed."""

from . import core_ops, nn_ops  # noqa: F401  (fill the lowering table)
from .env import DEVICES, Kernels, choose_kernels, import_paddle, place_for
from .lower import LOWERINGS, LoweringError, PaddleProgram, lower_ops
from .schedule import SCHEDULES, lr_factor
from .train import TrainConfig, Trainer, TrainingError

__all__ = ["DEVICES", "LOWERINGS", "SCHEDULES", "Kernels", "LoweringError", "PaddleProgram",
           "TrainConfig", "Trainer", "TrainingError", "choose_kernels", "import_paddle",
           "lower_ops", "lr_factor", "place_for"]
