"""polytask's loss combiners as Keras 3 losses (optional extra ``keras``).

Each loss takes ``y_true`` and ``y_pred`` of shape ``(batch, T)``, one column per task (a
single ``Dense(T)`` output over T target columns), computes each column's mean squared error
over the batch and combines the T values like its PyTorch namesake in :mod:`polytask`. Written
with ``keras.ops`` only, so it runs on any Keras backend; tested on the torch backend.

Importing this module selects Keras's torch backend unless ``KERAS_BACKEND`` is already set.

Examples
--------
>>> from polytask import keras as ptk  # doctest: +SKIP
>>> model.compile(optimizer="adam", loss=ptk.GeometricMean())  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

try:
    import keras
    from keras import ops
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("polytask.keras needs Keras 3: pip install 'polytask[keras]'") from error

__all__ = ["GeometricMean", "Mean", "Weighted", "task_mse"]

# Smallest positive normal float32: the floor that keeps log finite when a task's MSE is 0.
_TINY = 1.1754943508222875e-38


def task_mse(y_true: Any, y_pred: Any) -> Any:
    """Each column's mean squared error over the batch: shape ``(T,)``."""
    y_true = ops.cast(y_true, y_pred.dtype)
    if len(y_true.shape) == 1:
        y_true = ops.expand_dims(y_true, -1)
    return ops.mean(ops.square(y_pred - y_true), axis=0)


class _ColumnLoss(keras.losses.Loss):
    def __init__(self, name: str, reduction: str = "sum_over_batch_size", **kwargs: Any) -> None:
        super().__init__(name=name, reduction=reduction, **kwargs)

    def combine(self, losses: Any) -> Any:
        raise NotImplementedError

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.combine(task_mse(y_true, y_pred))


class Mean(_ColumnLoss):
    """Mean over tasks of each task's MSE (the plain MSE over all columns)."""

    def __init__(self, name: str = "polytask_mean", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def combine(self, losses: Any) -> Any:
        return ops.mean(losses)


class GeometricMean(_ColumnLoss):
    """``exp(mean_t(log(mean_batch((y_pred_t - y_true_t)^2))))``, the closed-form
    heteroscedastic loss; a task whose MSE is 0 is floored as in :class:`polytask.GeometricMean`.
    """

    def __init__(self, name: str = "polytask_geometric_mean", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def combine(self, losses: Any) -> Any:
        return ops.exp(ops.mean(ops.log(ops.maximum(losses, _TINY))))


class Weighted(_ColumnLoss):
    """``sum_t w_t * MSE_t`` with one fixed, finite, non-negative weight per column."""

    def __init__(
        self, weights: Sequence[float], name: str = "polytask_weighted", **kwargs: Any
    ) -> None:
        values = [float(w) for w in weights]
        if not values or any(not math.isfinite(w) or w < 0 for w in values):
            raise ValueError(f"Weighted: weights must be finite and non-negative, got {values}")
        super().__init__(name=name, **kwargs)
        self.weights = values

    def combine(self, losses: Any) -> Any:
        if losses.shape[-1] != len(self.weights):
            raise ValueError(
                f"Weighted: {len(self.weights)} weights for {losses.shape[-1]} output columns"
            )
        return ops.sum(ops.convert_to_tensor(self.weights, dtype=losses.dtype) * losses)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": self.weights}
