"""How a step turns a batch into the vector of task losses."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..models import ColumnHeads, MultiTaskModel, has_representation
from ..tasks import Task
from ._sources import Batch, SharedBatch, SharedSource, Source


class StepLosses(NamedTuple):
    """What a batch gives a step."""

    losses: Tensor
    """The losses of the tasks present, in task order."""
    positions: tuple[int, ...] | None
    """Which tasks those are (None = all)."""
    features: Tensor | Mapping[str, Tensor] | None
    """What the heads read (None when each task had its own batch)."""
    terms: Tensor | None
    """The structured terms' weighted values, in the objective's order (None without terms)."""
    regularization: Tensor | None = None
    """The model's own penalty of the step (``model.regularization(x)``, e.g. DSelect-k's
    entropy term), in training steps of a model that has one."""


class LossPlan:
    """Chosen once per fit, so the step does no decision work.

    - Per-task data: for each task in the step, the trunk on that task's batch and only that
      task's head.
    - Shared rows: one forward pass, then each present task's loss on its head.
    - Column fast path: when one output layer holds every task as a column
      (:class:`ColumnHeads`), every task is a default-loss regression and every row is
      labelled, the T MSEs are one column-wise mean over a single target matrix: a handful of
      kernels per step instead of a few per task, which keeps the trainer as fast as a
      hand-written loop on small models.
    - Structured terms (:class:`~polytask.Consistency`...) read the heads' outputs on the
      shared rows, so they need one dataset for every task and turn the column path off.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        source: Source,
        split: Callable[[Tensor], Tensor | Mapping[str, Tensor]] | None = None,
        terms: Sequence[Callable[[Mapping[str, Tensor]], Tensor]] = (),
    ) -> None:
        self.tasks = tuple(tasks)
        self.terms = tuple(terms)
        if self.terms and not isinstance(source, SharedSource):
            names = [getattr(term, "name", type(term).__name__) for term in self.terms]
            raise ValueError(
                f"structured terms {names} compare outputs on the same rows: they need one "
                "dataset with every task's targets (MultiTargetData), not one dataset per task"
            )
        # what the heads read in a training step (the engine's split)
        self.split = split
        self.representation = has_representation(model)
        # looked up once: a module's missing attribute costs an exception on every step
        self.regularized = callable(getattr(model, "regularization", None))
        self.columnar = (
            not self.terms
            and isinstance(source, SharedSource)
            and not source.host_masks
            and isinstance(model, MultiTaskModel)
            and isinstance(model.heads, ColumnHeads)
            and all(t.kind == "regression" and t.loss is None for t in tasks)
        )
        if self.columnar:
            bounds = model.heads.bounds
            order = [c for t in tasks for c in range(*bounds[t.name])]
            self.column_order = None if order == list(range(len(order))) else order
            sizes = [t.size for t in tasks]
            self.task_of_column = (
                None
                if all(s == 1 for s in sizes)
                else torch.repeat_interleave(torch.arange(len(tasks)), torch.tensor(sizes))
            )

    def adopt(self, source: Source) -> None:
        """Lay the source's targets out as :meth:`losses` reads them."""
        if self.columnar and isinstance(source.y, dict):
            y = source.y
            source.y = torch.cat([y[t.name].reshape(len(y[t.name]), -1) for t in self.tasks], 1)

    def task_targets(self, y: Tensor | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """A batch's targets by task: the inverse of :meth:`adopt`'s layout (each task's
        columns side by side, in task order) when the column path laid them out."""
        if not isinstance(y, Tensor):
            return y
        targets, start = {}, 0
        for task in self.tasks:
            block = y[:, start : start + task.size]
            targets[task.name] = block.reshape(len(y), *task.target_shape)
            start += task.size
        return targets

    def losses(self, model: nn.Module, batch: Batch, training: bool = False) -> StepLosses:
        """The losses of the tasks present in ``batch`` (see :meth:`_losses`), with the model's
        own penalty in a training step when it has one (``regularization(x)``, looked up when
        the plan is made)."""
        step = self._losses(model, batch, training)
        if not (training and self.regularized):
            return step
        inputs = [batch.x] if isinstance(batch, SharedBatch) else [p.x for p in batch.parts]
        penalty = sum(model.regularization(x) for x in inputs)
        return step._replace(regularization=penalty)

    def _losses(self, model: nn.Module, batch: Batch, training: bool) -> StepLosses:
        """The losses of the tasks present in ``batch``, their positions (None = all) and the
        shared features they came from (per task when each task had its own batch; None for a
        model that exposes no representation). In a training step the heads read what the
        engine's ``split`` made of the features."""
        if isinstance(batch, SharedBatch):
            if self.representation:
                features = model.features(batch.x)
                if training and self.split is not None:
                    features = self.split(features)
                if self.columnar:
                    losses = self._columnar(model, features, batch.y)
                    return StepLosses(losses, None, features, None)
                outputs = model.heads_forward(features)
            else:
                features, outputs = None, model(batch.x)
            positions = batch.positions or range(len(self.tasks))
            here = batch.local_counts
            losses = []
            for j, i in enumerate(positions):
                task = self.tasks[i]
                mask = None if batch.masks is None else batch.masks.get(task.name)
                out = task.output(outputs[task.name])
                if here is not None and here[j] == 0:
                    # data-parallel: this process's rows hold no label of a task that other
                    # processes' rows do; a zero on the graph (its weight is 0 too)
                    losses.append((out * 0).sum())
                    continue
                losses.append(task.compute_loss(out, batch.y[task.name], mask))
            terms = torch.stack([term(outputs) for term in self.terms]) if self.terms else None
            return StepLosses(torch.stack(losses), batch.positions, features, terms)
        losses, per_task = [], {}
        for part in batch.parts:
            task = self.tasks[part.position]
            if self.representation:  # each task's own rows: the features its loss came from
                z = per_task[task.name] = model.features(part.x)
                out = model.heads_forward(z, task.name)
            else:
                out = model(part.x, task=task.name)
            if part.local_count == 0:  # data-parallel: the other processes hold its labels
                losses.append((task.output(out) * 0).sum())
                continue
            losses.append(task.compute_loss(task.output(out), part.y, part.mask))
        return StepLosses(torch.stack(losses), batch.positions, per_task or None, None)

    def _columnar(
        self, model: nn.Module, features: Tensor | Mapping[str, Tensor], y: Tensor
    ) -> Tensor:
        if isinstance(features, Mapping):  # one input per task: the columns in task order
            outputs = model.heads_forward(features)
            out = torch.cat([outputs[t.name] for t in self.tasks], dim=1)
        else:
            out = model.heads.layer(features)
            if self.column_order is not None:
                out = out[:, self.column_order]
        # one kernel for the squared errors (and one for their gradient), not three
        per_column = nn.functional.mse_loss(out, y, reduction="none").mean(dim=0)
        if self.task_of_column is None:
            return per_column
        device = per_column.device
        sums = torch.zeros(len(self.tasks), device=device)
        sums.index_add_(0, self.task_of_column.to(device), per_column)
        return sums / torch.tensor([t.size for t in self.tasks], device=device)
