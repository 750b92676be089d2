"""The fit loop: Adam, early stopping on a stop set, best-weights restore, history."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._device import resolve_device
from ..data import MultiTargetData
from ..models import ColumnHeads, MultiTaskModel
from ..objectives import Objective, make_objective
from ..tasks import Task
from ._callbacks import Callback
from ._history import History
from ._progress import EpochProgress


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite during training. The model holds the best weights so far
    and :attr:`history` the epochs up to the failure."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


@dataclass
class _Split:
    """One split on the training device, targets validated and converted."""

    name: str
    x: Tensor
    y: dict[str, Tensor] | Tensor

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, index: Tensor | slice) -> tuple[Tensor, dict[str, Tensor] | Tensor]:
        if isinstance(self.y, Tensor):
            return self.x[index], self.y[index]
        return self.x[index], {name: column[index] for name, column in self.y.items()}


@dataclass
class FitState:
    """What callbacks may look at during a fit."""

    model: MultiTaskModel
    objective: Objective
    tasks: tuple[Task, ...]
    device: torch.device
    epoch: int = 0
    step: int = 0
    last_losses: Tensor | None = None
    last_weights: Tensor | None = None


def _prepare(
    data: MultiTargetData, split: str, tasks: Sequence[Task], device: torch.device
) -> _Split:
    if len(data) == 0:
        raise ValueError(f"the {split} split is empty")
    x = data.x
    if not x.is_floating_point():
        x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"inputs x of the {split} split: non-finite value (NaN or inf) at row {row}"
        )
    targets = {}
    for task in tasks:
        if task.name not in data.targets:
            raise ValueError(
                f"task {task.name!r}: no target column in the {split} split; "
                f"its columns are {list(data.targets)}"
            )
        targets[task.name] = task.prepare_target(data.targets[task.name], split).to(device)
    return _Split(split, x.to(device), targets)


def _check_tasks(model: MultiTaskModel, tasks: Sequence[Task]) -> tuple[Task, ...]:
    names = [t.name for t in tasks]
    if not tasks:
        raise ValueError("fit needs at least one task")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    if set(names) != set(model.task_names):
        raise ValueError(
            f"the tasks {names} do not match the model's heads {list(model.task_names)}"
        )
    return tuple(tasks)


def _check_outputs(model: MultiTaskModel, tasks: Sequence[Task], x: Tensor) -> None:
    """One forward pass on two rows, so a head of the wrong width fails before any step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(x[:2])
    except RuntimeError as error:
        raise ValueError(
            f"the model cannot take the inputs of shape (n, {x.shape[1]}): {error}"
        ) from error
    finally:
        model.train(was_training)
    for task in tasks:
        out = outputs[task.name]
        if out.ndim != 2 or out.shape[1] != task.size:
            raise ValueError(
                f"task {task.name!r}: its head outputs shape {tuple(out.shape)} for 2 rows, "
                f"expected (2, {task.size}) for a {task.kind} task of size {task.size}"
            )


class _LossPlan:
    """How a step turns a batch into the ``(T,)`` vector of task losses.

    The general path runs the model, then each task's loss on its own output. When one output
    layer holds every task as a column (:class:`ColumnHeads`) and every task is a default-loss
    regression, the T MSEs are one column-wise mean over a single target matrix: a handful of
    kernels per step instead of a few per task, which keeps the trainer as fast as a hand-written
    loop on small models.
    """

    def __init__(self, model: MultiTaskModel, tasks: Sequence[Task]) -> None:
        self.tasks = tuple(tasks)
        self.columnar = isinstance(model.heads, ColumnHeads) and all(
            t.kind == "regression" and t.loss is None for t in tasks
        )
        if self.columnar:
            # model column order and task order may differ; gather once per batch
            columns = {name: bounds for name, bounds in model.heads._bounds.items()}
            order = [c for t in tasks for c in range(*columns[t.name])]
            self.column_order = None if order == list(range(len(order))) else order
            sizes = [t.size for t in tasks]
            self.task_of_column = (
                None
                if all(s == 1 for s in sizes)
                else torch.repeat_interleave(torch.arange(len(tasks)), torch.tensor(sizes))
            )

    def targets(self, y: dict[str, Tensor]) -> dict[str, Tensor] | Tensor:
        """The prepared targets in the layout :meth:`losses` reads."""
        if not self.columnar:
            return y
        return torch.cat([y[t.name].reshape(len(y[t.name]), -1) for t in self.tasks], dim=1)

    def losses(self, model: MultiTaskModel, x: Tensor, y: dict[str, Tensor] | Tensor) -> Tensor:
        if not self.columnar:
            outputs = model(x)
            return torch.stack(
                [t.compute_loss(t.output(outputs[t.name]), y[t.name]) for t in self.tasks]
            )
        out = model.heads.layer(model.trunk(x))
        if self.column_order is not None:
            out = out[:, self.column_order]
        per_column = (out - y).square().mean(dim=0)
        if self.task_of_column is None:
            return per_column
        index = self.task_of_column.to(per_column.device)
        sums = torch.zeros(len(self.tasks), device=per_column.device).index_add_(
            0, index, per_column
        )
        return sums / torch.tensor([t.size for t in self.tasks], device=per_column.device)


@dataclass
class Trainer:
    """Fits a :class:`~polytask.MultiTaskModel` with Adam and early stopping on a stop set.

    Constructor arguments only store configuration; :meth:`fit` does the work.

    Parameters
    ----------
    objective
        How task losses become one update: an :class:`~polytask.objectives.Objective` or its CLI
        name (``"mean"``, ``"geometric"``, ...).
    lr, eps
        Adam's learning rate and epsilon.
    batch_size
        Rows per training step.
    max_epochs
        Upper bound on epochs.
    patience
        Stop after this many epochs without improvement of the stop-set objective; ``None``
        trains ``max_epochs`` epochs. Either way the weights of the best epoch are restored.
    seed
        Seeds shuffling and every random draw of the fit (dropout included) without touching the
        caller's global RNG. The same seed gives a bit-identical history on the CPU.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... The data are moved to the
        device once; steps make no host copies.
    quiet
        No progress bar.
    callbacks
        Observers called during the fit.

    Examples
    --------
    >>> from polytask import MultiTaskModel, Task, make_hetero, mlp, split
    >>> from torch import nn
    >>> train, stop, _ = split(make_hetero(400, n_tasks=2))
    >>> model = MultiTaskModel(mlp(1, 8, 2), {t: nn.Linear(8, 1) for t in ("task0", "task1")})
    >>> tasks = [Task("task0"), Task("task1")]
    >>> history = Trainer("geometric", max_epochs=3, quiet=True).fit(model, tasks, train, stop)
    >>> len(history)
    3
    """

    objective: Objective | str = "mean"
    lr: float = 1e-3
    eps: float = 1e-8
    batch_size: int = 32
    max_epochs: int = 100
    patience: int | None = 10
    seed: int = 0
    device: str | torch.device = "auto"
    quiet: bool = False
    callbacks: Sequence[Callback] = field(default_factory=tuple)
    eval_batch_size: int = 8192

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size, max_epochs and eval_batch_size must be positive")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be positive or None, got {self.patience}")
        if not (self.lr > 0 and self.eps > 0):
            raise ValueError(f"lr and eps must be positive, got lr={self.lr}, eps={self.eps}")

    def fit(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        train: MultiTargetData,
        stop: MultiTargetData,
    ) -> History:
        """Train ``model`` in place on ``train``, early-stopping on ``stop``.

        Every check on the inputs runs before the first step. Returns the :class:`History`;
        the model ends with the weights of the best epoch.
        """
        device = resolve_device(self.device)
        tasks = _check_tasks(model, tasks)
        train_split = _prepare(train, "train", tasks, device)
        stop_split = _prepare(stop, "stop", tasks, device)
        if train_split.x.shape[1:] != stop_split.x.shape[1:]:
            raise ValueError(
                f"inputs x: train rows have shape {tuple(train_split.x.shape[1:])}, "
                f"stop rows {tuple(stop_split.x.shape[1:])}"
            )
        objective = (
            make_objective(self.objective) if isinstance(self.objective, str) else self.objective
        )
        objective.bind([t.name for t in tasks])
        model.to(device)
        objective.to(device)
        _check_outputs(model, tasks, train_split.x)
        plan = _LossPlan(model, tasks)
        for part in (train_split, stop_split):
            part.y = plan.targets(part.y)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            return self._loop(model, objective, plan, train_split, stop_split, device)

    def _loop(
        self,
        model: MultiTaskModel,
        objective: Objective,
        plan: _LossPlan,
        train: _Split,
        stop: _Split,
        device: torch.device,
    ) -> History:
        tasks = plan.tasks
        names = tuple(t.name for t in tasks)
        history = History(names)
        state = FitState(model, objective, tasks, device)
        params = [*model.parameters(), *objective.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr, eps=self.eps)
        shuffle = torch.Generator().manual_seed(self.seed)
        best_value = float("inf")
        best_state = self._snapshot(model, objective)
        n = len(train)
        for callback in self.callbacks:
            callback.on_fit_start(state)

        with EpochProgress(self.max_epochs, f"{type(objective).__name__}", self.quiet) as bar:
            for epoch in range(1, self.max_epochs + 1):
                state.epoch = epoch
                started = time.perf_counter()
                model.train()
                loss_sum = torch.zeros(len(tasks), device=device)
                weight_sum = torch.zeros(len(tasks), device=device)
                value_sum = torch.zeros((), device=device)
                # steps with a non-finite loss per task: the task that broke first has the most
                bad_steps = torch.zeros(len(tasks), device=device)
                order = torch.randperm(n, generator=shuffle).to(device)
                steps = 0
                for index in order.split(self.batch_size):
                    xb, yb = train.rows(index)
                    losses = plan.losses(model, xb, yb)
                    optimizer.zero_grad(set_to_none=True)
                    step = objective.backward(losses)
                    optimizer.step()
                    rows = len(index)
                    loss_sum.add_(losses.detach(), alpha=rows)
                    bad_steps.add_(~torch.isfinite(losses.detach()))
                    value_sum.add_(step.value, alpha=rows)
                    weight_sum.add_(step.weights)
                    steps += 1
                    state.step += 1
                    state.last_losses, state.last_weights = losses.detach(), step.weights
                    for callback in self.callbacks:
                        callback.on_step_end(state)
                objective.end_epoch()
                stop_losses = self._split_losses(model, plan, stop)
                with torch.no_grad():
                    stop_value = objective.value(stop_losses)
                # one host transfer per epoch
                summary = torch.cat(
                    [
                        loss_sum / n,
                        weight_sum / steps,
                        stop_losses,
                        bad_steps,
                        (value_sum / n)[None],
                        stop_value[None],
                    ]
                ).tolist()
                k = len(tasks)
                record: dict[str, float] = {
                    "epoch": epoch,
                    "train_loss": summary[4 * k],
                    "stop_loss": summary[4 * k + 1],
                }
                for i, name in enumerate(names):
                    record[f"train_loss/{name}"] = summary[i]
                    record[f"stop_loss/{name}"] = summary[2 * k + i]
                    record[f"weight/{name}"] = summary[k + i]
                record["seconds"] = time.perf_counter() - started
                history.records.append(record)
                for callback in self.callbacks:
                    callback.on_epoch_end(state, record)
                self._check_finite(
                    record, summary[3 * k : 4 * k], history, model, objective, best_state
                )
                if record["stop_loss"] < best_value:
                    best_value = record["stop_loss"]
                    best_state = self._snapshot(model, objective)
                    history.best_epoch = epoch
                bar.advance(f"stop {record['stop_loss']:.4g}")
                if self.patience is not None and epoch - history.best_epoch >= self.patience:
                    history.stopped_early = True
                    history.stop_reason = (
                        f"no improvement of the stop loss for {self.patience} epochs"
                    )
                    break
        self._restore(model, objective, best_state)
        for callback in self.callbacks:
            callback.on_fit_end(state, history)
        return history

    def losses_on(
        self, model: MultiTaskModel, tasks: Sequence[Task], data: MultiTargetData
    ) -> Tensor:
        """Each task's mean loss over ``data``, in chunks, without gradients: shape ``(T,)``."""
        tasks = _check_tasks(model, tasks)
        plan = _LossPlan(model, tasks)
        split = _prepare(data, "evaluation", tasks, next(model.parameters()).device)
        split.y = plan.targets(split.y)
        return self._split_losses(model, plan, split)

    def _split_losses(self, model: MultiTaskModel, plan: _LossPlan, split: _Split) -> Tensor:
        was_training = model.training
        model.eval()
        total = None
        with torch.no_grad():
            for start in range(0, len(split), self.eval_batch_size):
                stop = min(start + self.eval_batch_size, len(split))
                chunk = plan.losses(model, *split.rows(slice(start, stop))) * (stop - start)
                total = chunk if total is None else total + chunk
        model.train(was_training)
        return total / len(split)

    @staticmethod
    def _snapshot(model: nn.Module, objective: nn.Module) -> tuple[dict, dict]:
        return (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            copy.deepcopy(objective.state_dict()),
        )

    @staticmethod
    def _restore(model: nn.Module, objective: nn.Module, snapshot: tuple[dict, dict]) -> None:
        model.load_state_dict(snapshot[0])
        objective.load_state_dict(snapshot[1])

    def _check_finite(
        self,
        record: dict[str, float],
        bad_steps: list[float],
        history: History,
        model: nn.Module,
        objective: nn.Module,
        best_state: tuple[dict, dict],
    ) -> None:
        names = history.task_names
        if max(bad_steps) > 0:
            # a NaN spreads to every task through the shared weights; name the first to break
            culprits = [n for n, b in zip(names, bad_steps, strict=True) if b == max(bad_steps)]
            where = "training"
        else:
            culprits = [n for n in names if not math.isfinite(record[f"stop_loss/{n}"])]
            where = "stop-set"
        if not culprits and math.isfinite(record["stop_loss"]):
            return
        self._restore(model, objective, best_state)
        history.stopped_early = True
        subject = f"task {culprits[0]!r}" if len(culprits) == 1 else f"tasks {culprits}"
        if not culprits:
            subject, where = "the objective", "stop-set"
        history.stop_reason = (
            f"epoch {record['epoch']}: the {where} loss of {subject} became non-finite "
            f"(NaN or inf); training stopped and the weights of epoch {history.best_epoch} restored"
        )
        raise NonFiniteLossError(history.stop_reason, history)
