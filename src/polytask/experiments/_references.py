"""Single-task scikit-learn references (and the training mean) per task, scored as a network's
outputs are: one implementation for the suite and the census and structured experiments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..datasets import Part
from ..evaluation import task_metrics
from ..tasks import Task

LINEAR = "linear"
"""Ridge regression, or L2 logistic regression (C = 1) for classification."""
BOOSTING = "hist-gradient-boosting"
"""Histogram gradient boosting, early-stopped on the stop set."""
TRAIN_MEAN = "train-mean"
"""Regression only: predicting the training mean, the denominator of the relative RMSE."""
BOOSTING_WORDS = 500
"""The most columns the gradient boosting reads: of a wider input (a bag of words), those
non-zero in the most training rows (the most frequent training words)."""
SCIKIT_LEARN_KINDS = ("regression", "binary", "multiclass")
"""The task kinds the scikit-learn references fit."""
_ALIASES = {"logistic-regression": LINEAR}  # the census and structured experiments' name


def _inputs(x: Any) -> Any:
    """Inputs as scikit-learn takes them: sparse CSR kept, tensors as 2-D numpy arrays."""
    if sp.issparse(x):
        return x
    array = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return array.reshape(len(array), -1)


def _task_arrays(part: Part, task: str, against: str = "targets") -> tuple[Any, np.ndarray]:
    """One task's inputs and targets (its own data, or the shared inputs and its column);
    ``against="clean"``: the noiseless targets a synthetic data set keeps."""
    if isinstance(part, Mapping):
        if against != "targets":
            raise ValueError(f"task {task!r}: a dataset per task has no {against} targets")
        data = part[task]
        return _inputs(data.x), data.y.numpy()
    targets = part.targets if against == "targets" else part.clean_targets
    if targets is None:
        raise ValueError(f"task {task!r}: the test data has no {against} targets")
    return _inputs(part.x), targets[task].numpy()


def reference_metrics(
    name: str,
    tasks: Sequence[Task],
    train: Part,
    stop: Part,
    test: Part,
    seed: int,
    against: str = "targets",
) -> dict[str, dict[str, float]]:
    """Test metrics of reference ``name`` (:data:`LINEAR` or ``logistic-regression``,
    :data:`BOOSTING`, :data:`TRAIN_MEAN`) fitted per task on ``train`` (boosting early-stopped
    on ``stop``): predictions for regression, logits for classification; scored against the
    test targets, or (``against="clean"``) their noiseless version.

    Examples
    --------
    >>> from polytask.data import MultiTargetData
    >>> x = np.arange(40.0).reshape(20, 2)
    >>> part = MultiTargetData(x, {"y": x @ np.array([1.0, -1.0])})
    >>> reference_metrics("linear", [Task("y")], part, part, part, 0)["y"]["mse"] < 1e-3
    True
    """
    from threadpoolctl import threadpool_limits

    name = _ALIASES.get(name, name)
    results = {}
    with threadpool_limits(limits=torch.get_num_threads()):
        for task in tasks:
            x, y = _task_arrays(train, task.name)
            x_stop, y_stop = _task_arrays(stop, task.name)
            x_test, y_test = _task_arrays(test, task.name, against)
            output = _reference_output(name, task, x, y, x_stop, y_stop, x_test, seed)
            if task.kind == "regression":  # the target's own shape: (n,) or (n, k)
                output = output.reshape(y_test.shape)
            results[task.name] = task_metrics(task, output, y_test)
    return results


def _reference_output(
    name: str,
    task: Task,
    x: Any,
    y: np.ndarray,
    x_stop: Any,
    y_stop: np.ndarray,
    x_test: Any,
    seed: int,
) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    y, y_stop = y.reshape(len(y), -1), y_stop.reshape(len(y_stop), -1)
    if task.kind == "regression":
        if name == TRAIN_MEAN:
            return np.broadcast_to(y.mean(axis=0), (x_test.shape[0], y.shape[1])).copy()
        if name == LINEAR:
            return Ridge(alpha=1.0).fit(x, y).predict(x_test).reshape(-1, y.shape[1])
        dense = [v.toarray() if sp.issparse(v) else v for v in (x, x_stop, x_test)]
        outputs = []
        for column in range(y.shape[1]):
            fitted = HistGradientBoostingRegressor(
                early_stopping=True, random_state=seed % 2**32
            ).fit(dense[0], y[:, column], X_val=dense[1], y_val=y_stop[:, column])
            outputs.append(fitted.predict(dense[2]))
        return np.stack(outputs, axis=1)
    if task.kind not in SCIKIT_LEARN_KINDS:
        raise ValueError(
            f"task {task.name!r}: no scikit-learn reference for a {task.kind} task; "
            f"leave {name!r} out of the references"
        )
    labels, labels_stop = y.ravel().astype(int), y_stop.ravel().astype(int)
    if name == BOOSTING and x.shape[1] > BOOSTING_WORDS:
        # trees on thousands of word columns take minutes per task: the boosting reads the
        # BOOSTING_WORDS columns (words) that are non-zero in the most training rows
        counts = np.asarray((x != 0).sum(axis=0)).ravel()
        keep = np.sort(np.argsort(-counts, kind="stable")[:BOOSTING_WORDS])
        x, x_stop, x_test = x[:, keep], x_stop[:, keep], x_test[:, keep]
    if name == LINEAR:
        fitted = LogisticRegression(max_iter=2000).fit(x, labels)
        probabilities = fitted.predict_proba(x_test)
    else:
        dense = [v.toarray() if sp.issparse(v) else v for v in (x, x_stop, x_test)]
        fitted = HistGradientBoostingClassifier(early_stopping=True, random_state=seed % 2**32).fit(
            dense[0], labels, X_val=dense[1], y_val=labels_stop
        )
        probabilities = fitted.predict_proba(dense[2])
    # every class in the output, as a head has it: a class absent from the training rows
    # gets probability 0
    size = 2 if task.kind == "binary" else task.size
    full = np.zeros((len(probabilities), size))
    full[:, fitted.classes_.astype(int)] = probabilities
    logs = np.log(np.maximum(full, 1e-12))
    return logs[:, 1] - logs[:, 0] if task.kind == "binary" else logs
