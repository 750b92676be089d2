"""Per-task metrics on held-out predictions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..tasks import Task

# Whether a larger value of each metric is better (used to sign relative comparisons).
GREATER_IS_BETTER: dict[str, bool] = {
    "mse": False,
    "mae": False,
    "accuracy": True,
    "f1": True,
    "macro_f1": True,
    "auc": True,
}


def _decide(task: Task, output: np.ndarray) -> np.ndarray:
    if task.kind == "multiclass":
        return output.argmax(axis=-1)
    return (output > 0).astype(np.int64)  # logits: p > 0.5


def _metric(name: str) -> Callable[[Task, np.ndarray, np.ndarray], float]:
    from sklearn import metrics as skm  # imported on first use: it costs ~2 s

    def mse(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean((output - target) ** 2))

    def mae(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean(np.abs(output - target)))

    def accuracy(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(skm.accuracy_score(target.astype(np.int64), _decide(task, output)))

    def f1(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        return float(skm.f1_score(target.astype(np.int64), _decide(task, output), zero_division=0))

    def macro_f1(task: Task, output: np.ndarray, target: np.ndarray) -> float:
        # a binary task (one output column) has the two classes 0 and 1
        labels = None if task.kind == "multilabel" else np.arange(max(task.size, 2))
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
        if len(np.unique(target)) < 2:
            return float("nan")  # undefined with one class present
        return float(skm.roc_auc_score(target, output))

    table = {"mse": mse, "mae": mae, "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1}
    table["auc"] = auc
    if name not in table:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(table)}")
    return table[name]


def task_metrics(task: Task, output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Every metric of ``task`` for prepared outputs (logits for classification) and targets.

    Examples
    --------
    >>> import numpy as np
    >>> task_metrics(Task("y"), np.array([1.0, 2.0]), np.array([1.0, 4.0]))
    {'mse': 2.0, 'mae': 1.0}
    """
    return {name: _metric(name)(task, output, target) for name in task.metrics}
