"""Predictions and per-task metrics of a fitted model on held-out data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from .._device import resolve_device
from ..data import MultiTargetData, TaskData, csr_batch
from ..models import MultiTaskModel
from ..models._protocol import model_dtype
from ..tasks import Task
from ._metrics import task_metrics


def predict(
    model: MultiTaskModel,
    tasks: Sequence[Task],
    x: torch.Tensor | np.ndarray | sp.csr_matrix,
    *,
    batch_size: int = 8192,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Each task's output (logits for classification) for inputs ``x``, as numpy arrays.

    ``x`` may be dense or a scipy CSR matrix (fed to the model as torch sparse batches).
    ``device`` runs the model there for the prediction only: the caller's model is moved back
    to where it was and keeps its train/eval mode, also when the prediction fails.

    Raises
    ------
    ValueError
        When ``device`` is given and the model's parameters and buffers lie on several
        devices (moving it would lose that placement).

    Examples
    --------
    >>> from torch import nn
    >>> model = MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1)})
    >>> predict(model, [Task("a")], np.zeros((3, 1)))["a"].shape
    (3,)
    """
    sparse = sp.issparse(x)
    tensors = [*model.parameters(), *model.buffers()]
    dtype = model_dtype(model)  # a float64 model reads float64
    if not sparse:
        x = torch.as_tensor(x, dtype=dtype)
        if x.ndim == 1:
            x = x[:, None]
    home = {t.device for t in tensors}
    if device is None:
        target_device = tensors[0].device if tensors else torch.device("cpu")
    else:
        target_device = resolve_device(device)
        if len(home) > 1:
            raise ValueError(
                f"predict(device={device!r}): the model's parameters lie on several devices "
                f"{sorted(map(str, home))}; moving it would lose that placement"
            )
    original = next(iter(home)) if len(home) == 1 else None
    move = device is not None and original is not None and original != target_device
    was_training = model.training
    chunks: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    try:
        if move:
            model.to(target_device)
        model.eval()
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                rows = x[start : start + batch_size]
                rows = csr_batch(sp.csr_matrix(rows, dtype=np.float32)) if sparse else rows
                outputs = model(rows.to(target_device, dtype=dtype))
                for task in tasks:
                    chunks[task.name].append(task.output(outputs[task.name]))
    finally:
        if move:
            model.to(original)
        model.train(was_training)
    return {name: torch.cat(parts).cpu().numpy() for name, parts in chunks.items()}


def evaluate(
    model: MultiTaskModel,
    tasks: Sequence[Task],
    data: MultiTargetData | Mapping[str, TaskData],
    *,
    against: Literal["targets", "clean"] = "targets",
    batch_size: int = 8192,
) -> dict[str, dict[str, float]]:
    """Each task's metrics on ``data``: task -> metric -> value.

    ``data`` is one :class:`MultiTargetData` for every task or a mapping task ->
    :class:`TaskData` (each task scored on its own data). Rows without a label for a task
    (partial labels) are left out of its metrics. ``against="clean"`` scores against the
    noiseless targets of synthetic data.

    Examples
    --------
    >>> from torch import nn
    >>> data = MultiTargetData(np.zeros((3, 1)), {"a": np.ones(3)})
    >>> model = MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1, bias=False)})
    >>> evaluate(model, [Task("a")], data)["a"]["mse"]
    1.0
    """
    if isinstance(data, Mapping):
        results = {}
        for task in tasks:
            if task.name not in data:
                raise ValueError(
                    f"task {task.name!r}: no data given; tasks with data: {list(data)}"
                )
            part = data[task.name]
            output = predict(model, [task], part.x, batch_size=batch_size)[task.name]
            mask = None if part.mask is None else torch.from_numpy(part.mask)
            results[task.name] = _score(task, output, part.y, mask)
        return results
    if against == "clean" and data.clean_targets is None:
        raise ValueError("evaluate(against='clean'): these data have no clean targets")
    columns = data.clean_targets if against == "clean" else data.targets
    outputs = predict(model, tasks, data.x, batch_size=batch_size)
    masks = data.masks or {}
    results = {}
    for task in tasks:
        if task.name not in columns:
            raise ValueError(f"task {task.name!r}: no {against} column; columns: {list(columns)}")
        results[task.name] = _score(
            task, outputs[task.name], columns[task.name], masks.get(task.name)
        )
    return results


def _score(
    task: Task, output: np.ndarray, target: torch.Tensor, mask: torch.Tensor | None
) -> dict[str, float]:
    prepared, known = task.prepare(target, "evaluation", mask)
    prepared = prepared.numpy()
    if known is not None:
        keep = known.numpy()
        output, prepared = output[keep], prepared[keep]
    return task_metrics(task, output, prepared)
