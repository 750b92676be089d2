"""Predictions and per-task metrics of a fitted model on held-out data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from .._device import resolve_device
from ..data import MultiTargetData
from ..models import MultiTaskModel
from ..tasks import Task
from ._metrics import task_metrics


def predict(
    model: MultiTaskModel,
    tasks: Sequence[Task],
    x: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 8192,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Each task's output (logits for classification) for inputs ``x``, as numpy arrays.

    Examples
    --------
    >>> from torch import nn
    >>> model = MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1)})
    >>> predict(model, [Task("a")], np.zeros((3, 1)))["a"].shape
    (3,)
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim == 1:
        x = x[:, None]
    target_device = (
        resolve_device(device) if device is not None else next(model.parameters()).device
    )
    model.to(target_device)
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs = model(x[start : start + batch_size].to(target_device))
            for task in tasks:
                chunks[task.name].append(task.output(outputs[task.name]))
    model.train(was_training)
    return {name: torch.cat(parts).cpu().numpy() for name, parts in chunks.items()}


def evaluate(
    model: MultiTaskModel,
    tasks: Sequence[Task],
    data: MultiTargetData,
    *,
    against: Literal["targets", "clean"] = "targets",
    batch_size: int = 8192,
) -> dict[str, dict[str, float]]:
    """Each task's metrics on ``data``: task -> metric -> value.

    ``against="clean"`` scores against the noiseless targets of synthetic data.

    Examples
    --------
    >>> from torch import nn
    >>> data = MultiTargetData(np.zeros((3, 1)), {"a": np.ones(3)})
    >>> model = MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1, bias=False)})
    >>> evaluate(model, [Task("a")], data)["a"]["mse"]
    1.0
    """
    if against == "clean" and data.clean_targets is None:
        raise ValueError("evaluate(against='clean'): these data have no clean targets")
    columns = data.clean_targets if against == "clean" else data.targets
    outputs = predict(model, tasks, data.x, batch_size=batch_size)
    results = {}
    for task in tasks:
        if task.name not in columns:
            raise ValueError(f"task {task.name!r}: no {against} column; columns: {list(columns)}")
        target = task.prepare_target(columns[task.name], "evaluation").numpy()
        results[task.name] = task_metrics(task, outputs[task.name], target)
    return results
