"""The gradient engine: per-task losses -> per-task gradients or their Gramian on the exact,
representation or naive path -> the method's update in ``.grad``. The one place that knows
autograd's tricks; the trainer owns one, and a user's own loop can too."""

from .._features import TaskFeatures
from ._engine import GradientEngine, LearnedWeightsWarning
from ._linalg import BatchedBackwardWarning, combine_rows, gramian, task_jacobian

__all__ = [
    "BatchedBackwardWarning",
    "GradientEngine",
    "LearnedWeightsWarning",
    "TaskFeatures",
    "combine_rows",
    "gramian",
    "task_jacobian",
]
