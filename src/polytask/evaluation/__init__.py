"""Per-task metrics on held-out data, and figures."""

from ._evaluate import evaluate, predict
from ._metrics import GREATER_IS_BETTER, task_metrics
from ._plots import plot_predictions, plot_task_losses, plot_training_curves

__all__ = [
    "GREATER_IS_BETTER",
    "evaluate",
    "plot_predictions",
    "plot_task_losses",
    "plot_training_curves",
    "predict",
    "task_metrics",
]
