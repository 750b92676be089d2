"""Per-task metrics on held-out data, statistics of replicated comparisons, and figures."""

from ._evaluate import evaluate, predict
from ._metrics import (
    GREATER_IS_BETTER,
    METRICS,
    Metric,
    greater_is_better,
    metric_info,
    task_metrics,
)
from ._plots import (
    plot_delta_m,
    plot_gate_weights,
    plot_gradient_cosines,
    plot_gradient_norms,
    plot_metric_curves,
    plot_predictions,
    plot_probe,
    plot_ratio_boxplots,
    plot_task_losses,
    plot_training_curves,
)
from ._statistics import (
    DELTA_CONVENTION,
    RATIO_CONVENTION,
    FewReplicationsWarning,
    IncompleteReplicationsWarning,
    delta_m,
    holm,
    improvement_ratios,
    summarize,
)

__all__ = [
    "DELTA_CONVENTION",
    "GREATER_IS_BETTER",
    "METRICS",
    "RATIO_CONVENTION",
    "FewReplicationsWarning",
    "IncompleteReplicationsWarning",
    "Metric",
    "delta_m",
    "evaluate",
    "greater_is_better",
    "holm",
    "improvement_ratios",
    "metric_info",
    "plot_delta_m",
    "plot_gate_weights",
    "plot_gradient_cosines",
    "plot_gradient_norms",
    "plot_metric_curves",
    "plot_predictions",
    "plot_probe",
    "plot_ratio_boxplots",
    "plot_task_losses",
    "plot_training_curves",
    "predict",
    "summarize",
    "task_metrics",
]
