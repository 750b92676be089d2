"""Gradient monitoring: per-layer gradient norms and task-gradient cosines over training."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from .._features import TaskFeatures
from ..data import MultiTargetData, TaskData
from ..tasks import Task
from ._callbacks import Callback
from ._trainer import FitState


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters grouped by the module that owns them (``trunk.0``, ``heads.movie``, ...)."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        groups.setdefault(name.rpartition(".")[0] or name, []).append(parameter)
    return groups


class GradientMonitor(Callback):
    """Every ``every`` steps, records the gradient norm of each layer (the combined update the
    optimizer applies) and the cosine similarity between the tasks' gradients on the shared
    (trunk) parameters.

    Per-task gradients cost one extra backward pass per task on the monitored steps only.

    Examples
    --------
    >>> import polytask as pt
    >>> from torch import nn
    >>> train, stop, _ = pt.split(pt.make_hetero(2000, n_tasks=2, seed=0))
    >>> model = pt.MultiTaskModel(pt.mlp(1, 8, 2), {t: nn.Linear(8, 1) for t in ("task0", "task1")})
    >>> monitor = GradientMonitor(every=5)
    >>> trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu", callbacks=[monitor])
    >>> _ = trainer.fit(model, pt.regression_tasks(["task0", "task1"]), train, stop)
    >>> "cos/task0|task1" in monitor.frame().columns
    True
    """

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.every = every
        self.records: list[dict[str, float]] = []
        self._pending: dict[str, float] | None = None

    def on_fit_start(self, state: FitState) -> None:
        self.records, self._pending = [], None  # one fit's records: steps restart at each fit

    def on_before_backward(
        self, state: FitState, losses: Tensor, positions: tuple[int, ...] | None
    ) -> None:
        if state.step % self.every:
            self._pending = None
            return
        record: dict[str, float] = {"step": state.step, "epoch": state.epoch}
        shared = [p for p in state.model.shared_parameters() if p.requires_grad]
        names = [state.tasks[i].name for i in (positions or range(len(state.tasks)))]
        gradients = {}
        split = isinstance(state.features, TaskFeatures)  # each head read its own leaf of z
        for name, loss in zip(names, losses, strict=True):
            if split:  # chain rule through the leaf: dL/dz, then the trunk's vector-Jacobian
                (gz,) = torch.autograd.grad(loss, state.features[name], retain_graph=True)
                grads = torch.autograd.grad(
                    state.features.z, shared, gz, retain_graph=True, allow_unused=True
                )
            else:
                grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            flat = [g.reshape(-1) for g in grads if g is not None]
            gradients[name] = torch.cat(flat) if flat else None
        for a, b in itertools.combinations(names, 2):
            ga, gb = gradients[a], gradients[b]
            if ga is not None and gb is not None:
                cosine = torch.nn.functional.cosine_similarity(ga, gb, dim=0)
                record[f"cos/{a}|{b}"] = float(cosine)
        self._pending = record

    def on_step_end(self, state: FitState) -> None:
        if self._pending is None:
            return
        record = self._pending
        for group, parameters in parameter_groups(state.model).items():
            squares = [
                float(p.grad.detach().pow(2).sum()) for p in parameters if p.grad is not None
            ]
            if squares:
                record[f"norm/{group}"] = math.sqrt(sum(squares))
        self.records.append(record)
        self._pending = None

    def frame(self) -> pd.DataFrame:
        """One row per monitored step: ``step, epoch, norm/<layer>..., cos/<a>|<b>...``."""
        return pd.DataFrame(self.records)

    def state_dict(self) -> dict[str, Any]:
        """The records so far: a resumed fit continues them."""
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]


class TaskMetricProbe(Callback):
    """Every ``every`` steps, evaluates some tasks on held-out data and notes which tasks the
    step trained: shows forgetting under the ``sequential`` schedule.

    ``data`` maps task -> :class:`~polytask.data.TaskData` (or one
    :class:`~polytask.MultiTargetData` for all), e.g. the stop set.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        data: MultiTargetData | Mapping[str, TaskData],
        every: int = 10,
        metric: str | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.tasks, self.data, self.every, self.metric = list(tasks), data, every, metric
        self.records: list[dict[str, float | str]] = []

    def on_fit_start(self, state: FitState) -> None:
        self.records = []  # one fit's records: steps restart at each fit

    def state_dict(self) -> dict[str, Any]:
        """The records so far: a resumed fit continues them."""
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]

    def on_step_end(self, state: FitState) -> None:
        if state.step % self.every:
            return
        from ..evaluation import evaluate

        trained = [state.tasks[i].name for i in (state.last_positions or range(len(state.tasks)))]
        results = evaluate(state.model, self.tasks, self.data)
        for task in self.tasks:
            metric = self.metric or task.metrics[0]
            self.records.append(
                {
                    "step": state.step,
                    "epoch": state.epoch,
                    "task": task.name,
                    "metric": metric,
                    "value": results[task.name][metric],
                    "training": ",".join(trained),
                }
            )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)
