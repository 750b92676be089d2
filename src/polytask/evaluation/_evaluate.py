"""Predictions and per-task metrics of a fitted model on held-out data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from .._checks import as_int, check_finite
from .._device import resolve_device
from ..data import MultiTargetData, TaskData, csr_batch
from ..models import MultiTaskModel
from ..models._protocol import model_dtype
from ..tasks import Task
from ._metrics import task_metrics

AGAINST = ("targets", "clean")  # what evaluate scores against


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
    TypeError
        When ``tasks`` are not :class:`~polytask.Task` objects or ``x`` is not an array
        (a :class:`~polytask.MultiTargetData` goes to :func:`evaluate`, or pass its ``.x``).
    ValueError
        When a task is not one of the model's, ``batch_size`` is not a positive integer, ``x``
        holds NaN or inf, the model cannot take ``x`` or a head's output does not have the
        task's size (as the trainer refuses them), or when
        ``device`` is given and the model's parameters and buffers lie on several devices
        (moving it would lose that placement).

    Examples
    --------
    >>> from torch import nn
    >>> model = MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1)})
    >>> predict(model, [Task("a")], np.zeros((3, 1)))["a"].shape
    (3,)
    """
    tasks = _check_tasks(model, tasks, "predict")
    batch_size = as_int(batch_size, "predict: batch_size")
    return _predict(model, tasks, x, batch_size, device, "inputs x")


def _predict(
    model: MultiTaskModel,
    tasks: Sequence[Task],
    x: torch.Tensor | np.ndarray | sp.csr_matrix,
    batch_size: int,
    device: str | torch.device | None,
    where: str,
) -> dict[str, np.ndarray]:
    """:func:`predict` for checked ``tasks``; ``where`` names the inputs in errors."""
    tensors = [*model.parameters(), *model.buffers()]
    dtype = model_dtype(model)  # a float64 model reads float64
    x = _check_inputs(x, dtype, where)
    sparse = sp.issparse(x)
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
                try:
                    outputs = model(rows.to(target_device, dtype=dtype))
                except (RuntimeError, TypeError, ValueError) as error:  # ValueError: a module's
                    if start:  # the first batch went through: not a matter of the inputs' shape
                        raise
                    shape = tuple(x.shape)
                    have = f"have {shape[1]} features (shape {shape})" if x.ndim == 2 else shape
                    raise ValueError(
                        f"{where} {have}: the model cannot take them (its error: {error})"
                    ) from error
                for task in tasks:
                    out = _task_output(task, outputs, rows.shape[0])
                    chunks[task.name].append(task.output(out))
    finally:
        if move:
            model.to(original)
        model.train(was_training)
    return {name: torch.cat(parts).cpu().numpy() for name, parts in chunks.items()}


def _check_tasks(model: MultiTaskModel, tasks: Sequence[Task], caller: str) -> list[Task]:
    """``tasks`` as a list, refused unless they are distinct :class:`Task` objects of the model's
    (when the model names its tasks)."""
    if isinstance(tasks, str | Task):
        raise TypeError(
            f"{caller}: tasks must be a list of pt.Task, got a single {type(tasks).__name__} "
            f"{tasks!r}; wrap it in a list"
        )
    tasks = list(tasks)
    for task in tasks:
        if not isinstance(task, Task):
            hint = (
                f"; pass pt.Task objects, e.g. pt.Task({task!r}, kind=...), as to Trainer.fit"
                if isinstance(task, str)
                else ""
            )
            raise TypeError(
                f"{caller}: tasks must be pt.Task objects, got {type(task).__name__} {task!r}{hint}"
            )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{caller}: task names must be unique, got {names}")
    model_names = getattr(model, "task_names", None)
    if model_names is not None:
        for name in names:
            if name not in model_names:
                raise ValueError(
                    f"task {name!r} is not one of the model's tasks {list(model_names)}"
                )
    return tasks


def _check_inputs(
    x: torch.Tensor | np.ndarray | sp.spmatrix, dtype: torch.dtype, where: str
) -> torch.Tensor | sp.csr_matrix:
    """``x`` as the model reads it (a tensor of ``dtype``, at least 2-D, or a CSR matrix),
    refused when it is not an array or holds NaN or inf (one pass over its values)."""
    if sp.issparse(x):
        check_finite(x, where)
        return sp.csr_matrix(x)  # shares the arrays of a CSR matrix
    expected = "the inputs (a numpy array, torch tensor or scipy CSR matrix)"
    if isinstance(x, MultiTargetData | TaskData | Mapping):
        raise TypeError(
            f"{where}: expected {expected}, got a {type(x).__name__}; pass its .x, or call "
            "evaluate for the metrics"
        )
    try:
        x = torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"{where}: expected {expected}, got {type(x).__name__} ({error})"
        ) from error
    if x.ndim == 0:
        raise ValueError(f"{where}: got a scalar; expected shape (n, features)")
    if x.ndim == 1:
        x = x[:, None]
    check_finite(x, where)
    return x


def _task_output(task: Task, outputs: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
    """``task``'s output for a batch of ``n`` rows, refused unless it has ``task.size`` values
    a row (the trainer's check of the heads, in its wording)."""
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"the model returns a {type(outputs).__name__}, not a mapping task -> output; "
            "wrap it with pt.as_multitask"
        )
    if task.name not in outputs:
        raise ValueError(
            f"task {task.name!r}: the model gives no output for it, only {list(outputs)}"
        )
    out = outputs[task.name]
    if out.ndim == 0 or out.shape[0] != n or out.numel() != n * task.size:
        raise ValueError(
            f"task {task.name!r}: its head outputs shape {tuple(out.shape)} for {n} rows, "
            f"expected ({n}, {task.size}) for a {task.kind} task of size {task.size}"
        )
    return out


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

    Raises
    ------
    TypeError
        When ``tasks`` are not :class:`~polytask.Task` objects or ``data`` is not one of the
        two kinds above.
    ValueError
        When ``against`` is neither ``"targets"`` nor ``"clean"``, the data have no clean
        targets for ``against="clean"`` (per-task data never do), a task has no data or target
        column, or for the reasons :func:`predict` gives; all before any prediction.

    Examples
    --------
    >>> from torch import nn
    >>> data = MultiTargetData(np.zeros((3, 1)), {"a": np.ones(3)})
    >>> model = MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1, bias=False)})
    >>> evaluate(model, [Task("a")], data)["a"]["mse"]
    1.0
    """
    if against not in AGAINST:
        raise ValueError(f"evaluate: against must be one of {AGAINST}, got {against!r}")
    tasks = _check_tasks(model, tasks, "evaluate")
    batch_size = as_int(batch_size, "evaluate: batch_size")
    if isinstance(data, Mapping):
        if against == "clean":
            raise ValueError(
                f"evaluate(against='clean'): per-task data (task -> TaskData, for tasks "
                f"{list(data)}) have no clean targets; use against='targets', or a "
                "MultiTargetData with clean_targets"
            )
        for task in tasks:
            if task.name not in data:
                raise ValueError(
                    f"task {task.name!r}: no data given; tasks with data: {list(data)}"
                )
            if not isinstance(data[task.name], TaskData):
                raise TypeError(
                    f"task {task.name!r}: expected its data as a TaskData, got "
                    f"{type(data[task.name]).__name__}"
                )
        results = {}
        for task in tasks:
            part = data[task.name]
            where = f"task {task.name!r}: inputs x"
            output = _predict(model, [task], part.x, batch_size, None, where)[task.name]
            mask = None if part.mask is None else torch.from_numpy(part.mask)
            results[task.name] = _score(task, output, part.y, mask)
        return results
    if not isinstance(data, MultiTargetData):
        raise TypeError(
            "evaluate: data must be a MultiTargetData or a mapping task -> TaskData, got "
            f"{type(data).__name__} (for bare inputs, call predict)"
        )
    if against == "clean" and data.clean_targets is None:
        raise ValueError("evaluate(against='clean'): these data have no clean targets")
    columns = data.clean_targets if against == "clean" else data.targets
    for task in tasks:
        if task.name not in columns:
            raise ValueError(f"task {task.name!r}: no {against} column; columns: {list(columns)}")
    outputs = _predict(model, tasks, data.x, batch_size, None, "inputs x")
    masks = data.masks or {}
    return {
        task.name: _score(task, outputs[task.name], columns[task.name], masks.get(task.name))
        for task in tasks
    }


def _score(
    task: Task, output: np.ndarray, target: torch.Tensor, mask: torch.Tensor | None
) -> dict[str, float]:
    prepared, known = task.prepare(target, "evaluation", mask)
    prepared = prepared.numpy()
    if known is not None:
        keep = known.numpy()
        output, prepared = output[keep], prepared[keep]
    return task_metrics(task, output, prepared)
