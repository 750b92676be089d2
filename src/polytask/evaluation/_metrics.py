"""Per-task metrics on held-out predictions.

Each metric carries its direction, as scikit-learn's scorers do (``greater_is_better``), and
whether it lives on a ratio scale (a positive quantity whose ratios mean something, such as
MSE): comparisons read both from the registry :data:`METRICS` and refuse a name it lacks.

Multilabel targets may hold NaN for a missing label (see ``Task.prepare``): every metric
leaves such labels out, label by label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..tasks import Task

Score = Callable[[Task, np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    """A named metric with its direction.

    Parameters
    ----------
    name
        The name tasks and result tables use.
    greater_is_better
        Whether a larger value is better (accuracy) or worse (MSE).
    ratio_scale
        Whether the metric is a positive quantity on a ratio scale (MSE, MAE), so that the
        paired test of two methods runs on log ratios rather than raw differences.
    """

    name: str
    greater_is_better: bool
    ratio_scale: bool = False


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("mse", greater_is_better=False, ratio_scale=True),
        Metric("mae", greater_is_better=False, ratio_scale=True),
        Metric("accuracy", greater_is_better=True),
        Metric("f1", greater_is_better=True),
        Metric("macro_f1", greater_is_better=True),
        Metric("auc", greater_is_better=True),
    )
}

# Whether a larger value of each metric is better (kept for callers that read the mapping;
# prefer :func:`metric_info`, which refuses an unknown name).
GREATER_IS_BETTER: dict[str, bool] = {name: m.greater_is_better for name, m in METRICS.items()}


def metric_info(name: str) -> Metric:
    """The registry entry of metric ``name``.

    Raises
    ------
    ValueError
        For a name the registry lacks, listing the known ones (no direction is guessed).

    Examples
    --------
    >>> metric_info("mse").greater_is_better
    False
    """
    if name not in METRICS:
        raise ValueError(
            f"unknown metric {name!r}: its direction (greater or lower is better) is not "
            f"known; known metrics: {sorted(METRICS)}"
        )
    return METRICS[name]


def greater_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better; refuses an unknown name.

    Examples
    --------
    >>> greater_is_better("accuracy"), greater_is_better("mse")
    (True, False)
    """
    return metric_info(name).greater_is_better


def _decide(task: Task, output: np.ndarray) -> np.ndarray:
    if task.kind == "multiclass":
        return output.argmax(axis=-1)
    return (output > 0).astype(np.int64)  # logits: p > 0.5


def _label_columns(output: np.ndarray, target: np.ndarray):
    """(output column, target column) of each label over the rows where it is known."""
    output = output.reshape(len(output), -1)
    target = target.reshape(len(target), -1)
    for j in range(target.shape[1]):
        known = ~np.isnan(target[:, j])
        yield output[known, j], target[known, j]


def _metric(name: str) -> Score:
    metric_info(name)  # refuses an unknown name, listing the known ones
    from sklearn import metrics as skm  # imported on first use: it costs ~2 s

    def mse(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean(((output - target) ** 2)[~np.isnan(target)]))

    def mae(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean(np.abs(output - target)[~np.isnan(target)]))

    def accuracy(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        if task.kind == "multilabel" and output.ndim > 1:
            # subset accuracy over the known labels of each row with at least one known label
            missing = np.isnan(target)
            rows = ~missing.all(axis=1)
            hit = (_decide(task, output) == np.nan_to_num(target)) | missing
            return float(hit[rows].all(axis=1).mean()) if rows.any() else float("nan")
        return float(skm.accuracy_score(target.astype(np.int64), _decide(task, output)))

    def f1(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(skm.f1_score(target.astype(np.int64), _decide(task, output), zero_division=0))

    def macro_f1(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        if task.kind == "multilabel":
            # per label over the rows where it is known, then the mean over the labels known
            # somewhere in the split (NaN when none is)
            scores = [
                skm.f1_score(y.astype(np.int64), _decide(task, o), zero_division=0)
                for o, y in _label_columns(output, target)
                if len(y)
            ]
            return float(np.mean(scores)) if scores else float("nan")
        # a binary task (one output column) has the two classes 0 and 1
        labels = np.arange(max(task.size, 2))
        return float(
            skm.f1_score(
                target.astype(np.int64),
                _decide(task, output),
                average="macro",
                labels=labels,
                zero_division=0,
            )
        )

    def auc(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        if task.kind == "multilabel":
            # macro average over labels, each over the rows where it is known
            scores = [
                skm.roc_auc_score(y, o) if len(np.unique(y)) == 2 else float("nan")
                for o, y in _label_columns(output, target)
            ]
            return float(np.mean(scores))  # NaN when a label has one class: undefined
        if len(np.unique(target)) < 2:
            return float("nan")  # undefined with one class present
        return float(skm.roc_auc_score(target, output))

    table = {"mse": mse, "mae": mae, "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1}
    table["auc"] = auc
    return table[name]


def task_metrics(task: Task, output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Every metric of ``task`` for prepared outputs (logits for classification) and targets.

    A NaN in a multilabel target marks a missing label: each metric leaves it out.

    Examples
    --------
    >>> import numpy as np
    >>> task_metrics(Task("y"), np.array([1.0, 2.0]), np.array([1.0, 4.0]))
    {'mse': 2.0, 'mae': 1.0}
    """
    return {name: _metric(name)(task, output, target) for name in task.metrics}
