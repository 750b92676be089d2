"""The fit loop: Adam, early stopping on a stop set, best-weights restore, history."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .._device import resolve_device
from ..data import MultiTargetData, Schedule, TaskData
from ..evaluation._metrics import task_metrics
from ..models import MultiTaskModel
from ..objectives import Objective, make_objective
from ..tasks import Task
from ._callbacks import Callback
from ._history import History
from ._losses import LossPlan
from ._progress import EpochProgress
from ._sources import PerTaskSource, SharedBatch, SharedSource, make_source

Data = MultiTargetData | Mapping[str, TaskData]


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite during training. The model holds the best weights so far
    and :attr:`history` the epochs up to the failure."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


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
    last_positions: tuple[int, ...] | None = None
    last_weights: Tensor | None = None
    features: Tensor | Mapping[str, Tensor] | None = None
    """What the heads read in the current step (see ``Objective.split_features``)."""


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


def _check_outputs(
    model: MultiTaskModel, tasks: Sequence[Task], source: SharedSource | PerTaskSource
) -> None:
    """One forward pass on a couple of rows, so a head of the wrong width or a trunk that cannot
    take the inputs fails before any step."""
    batch = next(source.chunks(2))
    x = batch.x if isinstance(batch, SharedBatch) else batch.parts[0].x
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(x)
    except RuntimeError as error:
        raise ValueError(
            f"the model cannot take the inputs of shape (n, {source.n_features[0]}): {error}"
        ) from error
    finally:
        model.train(was_training)
    for task in tasks:
        out = outputs[task.name]
        if out.ndim != 2 or out.shape[1] != task.size:
            raise ValueError(
                f"task {task.name!r}: its head outputs shape {tuple(out.shape)} for "
                f"{len(x)} rows, expected ({len(x)}, {task.size}) for a {task.kind} task "
                f"of size {task.size}"
            )


class _EpochTotals:
    """Per-epoch sums kept on the device, read back once at the end of the epoch."""

    def __init__(self, k: int, device: torch.device, cache: dict) -> None:
        self.device = device
        # (positions, counts) -> their index and row-count tensors on the device, shared across
        # epochs: a step makes no host-to-device copy once a combination has been seen
        self._cache = cache
        self.loss_sum = torch.zeros(k, device=device)  # loss x labelled rows, per task
        self.weight_sum = torch.zeros(k, device=device)
        self.value_sum = torch.zeros((), device=device)
        # steps with a NaN loss per task: the task that broke first has the most
        self.bad_steps = torch.zeros(k, device=device)
        self.rows = np.zeros(k)
        self.steps = 0
        self.bad: list[float] = []
        self.term_sum: Tensor | None = None  # structured terms, per term

    def add(
        self,
        losses: Tensor,
        positions: tuple[int, ...] | None,
        counts: list[int],
        value: Tensor,
        weights: Tensor,
        terms: Tensor | None = None,
    ) -> None:
        broken = losses != losses  # NaN: a cheaper test than isfinite, run every step
        if positions is None:  # every task, all with the same rows
            self.rows += counts[0]
            self.loss_sum.add_(losses, alpha=counts[0])
            self.bad_steps.add_(broken)
        else:
            key = (positions, tuple(counts))
            if key not in self._cache:
                self._cache[key] = (
                    torch.tensor(positions, device=self.device),
                    torch.tensor(counts, dtype=losses.dtype, device=self.device),
                )
            index, rows = self._cache[key]
            self.rows[list(positions)] += counts
            self.loss_sum.index_add_(0, index, losses * rows)
            self.bad_steps.index_add_(0, index, broken.to(self.bad_steps.dtype))
        self.value_sum.add_(value)
        self.weight_sum.add_(weights)
        if terms is not None:
            if self.term_sum is None:
                self.term_sum = torch.zeros_like(terms)
            self.term_sum.add_(terms)
        self.steps += 1

    def record(
        self, epoch: int, names: tuple[str, ...], stop_losses: Tensor, stop_value: Tensor
    ) -> dict[str, float]:
        k, steps = len(names), max(self.steps, 1)
        parts = [self.loss_sum, self.weight_sum / steps, stop_losses, self.bad_steps]
        flat = torch.cat([*parts, (self.value_sum / steps)[None], stop_value[None]]).tolist()
        self.bad = flat[3 * k : 4 * k]
        record: dict[str, float] = {
            "epoch": epoch,
            "train_loss": flat[4 * k],
            "stop_loss": flat[4 * k + 1],
        }
        for i, name in enumerate(names):
            rows = self.rows[i]
            record[f"train_loss/{name}"] = flat[i] / rows if rows else float("nan")
            record[f"stop_loss/{name}"] = flat[2 * k + i]
            record[f"weight/{name}"] = flat[k + i]
        return record

    def record_terms(
        self, record: dict[str, float], names: Sequence[str], stop_terms: Tensor | None
    ) -> None:
        """Each structured term's mean over the epoch's steps and its value on the stop set."""
        if self.term_sum is None or stop_terms is None:
            return
        train = (self.term_sum / max(self.steps, 1)).tolist()
        for name, value, stop in zip(names, train, stop_terms.tolist(), strict=True):
            record[f"term/{name}"] = value
            record[f"stop_term/{name}"] = stop


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
        Rows per training step (per task, with one dataset per task).
    max_epochs
        Upper bound on epochs.
    patience
        Stop after this many epochs without improvement of the stop-set objective; ``None``
        trains ``max_epochs`` epochs. Either way the weights of the best epoch are restored.
    seed
        Seeds shuffling, schedules and every random draw of the fit (dropout included) without
        touching the caller's global RNG. The same seed gives a bit-identical history on the CPU.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... The data are moved to the
        device once; steps make no host copies (sparse inputs: one copy of each CSR batch).
    quiet
        No progress bar.
    callbacks
        Observers called during the fit.
    schedule
        With one dataset per task: how their batches are mixed into steps (a
        :class:`~polytask.data.Schedule` or its kind, e.g. ``"round_robin"``).
    sparse_input
        Sparse (CSR) inputs reach the model as torch sparse tensors (``nn.Linear`` accepts
        them); ``False`` densifies each batch.
    track_metrics
        Record each task's metrics on the stop set every epoch (``stop_<metric>/<task>``).

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
    schedule: Schedule | str = "round_robin"
    sparse_input: bool = True
    track_metrics: bool = False
    eval_batch_size: int = 8192

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size, max_epochs and eval_batch_size must be positive")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be positive or None, got {self.patience}")
        if not (self.lr > 0 and self.eps > 0):
            raise ValueError(f"lr and eps must be positive, got lr={self.lr}, eps={self.eps}")
        if isinstance(self.schedule, str):
            self.schedule = Schedule(self.schedule)

    def fit(self, model: MultiTaskModel, tasks: Sequence[Task], train: Data, stop: Data) -> History:
        """Train ``model`` in place on ``train``, early-stopping on ``stop``.

        ``train`` and ``stop`` are each a :class:`~polytask.MultiTargetData` (every row carries
        every task's target) or a mapping task -> :class:`~polytask.data.TaskData` (one dataset
        per task, mixed by :attr:`schedule`). Every check on the inputs runs before the first
        step. Returns the :class:`History`; the model ends with the weights of the best epoch.
        """
        device = resolve_device(self.device)
        tasks = _check_tasks(model, tasks)
        train_source = make_source(train, "train", tasks, device, sparse_input=self.sparse_input)
        stop_source = make_source(stop, "stop", tasks, device, sparse_input=self.sparse_input)
        if type(train_source) is not type(stop_source):
            raise ValueError("train and stop data must be of the same kind")
        if train_source.n_features != stop_source.n_features:
            raise ValueError(
                f"inputs x: train rows have shape {train_source.n_features}, "
                f"stop rows {stop_source.n_features}"
            )
        objective = self.objective
        if isinstance(objective, str):
            objective = make_objective(objective)
        objective.bind([t.name for t in tasks])
        objective.bind_tasks(tasks)
        model.to(device)
        objective.to(device)
        objective.attach(model)
        _check_outputs(model, tasks, train_source)
        plan = LossPlan(model, tasks, train_source, objective.split_features, objective.terms)
        for source in (train_source, stop_source):
            plan.adopt(source)
        if objective.terms:  # a term's shape errors surface here, before any step
            with torch.no_grad():
                plan.losses(model, next(iter(train_source.chunks(2))))
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            return self._loop(model, objective, plan, train_source, stop_source, device)

    def _batches(self, source: SharedSource | PerTaskSource, shuffle: torch.Generator, epoch: int):
        if isinstance(source, SharedSource):
            return source.epoch(shuffle, self.batch_size)
        return source.epoch(self.schedule, self.batch_size, seed=self.seed * 1_000_003 + epoch)

    def _loop(
        self,
        model: MultiTaskModel,
        objective: Objective,
        plan: LossPlan,
        train: SharedSource | PerTaskSource,
        stop: SharedSource | PerTaskSource,
        device: torch.device,
    ) -> History:
        tasks = plan.tasks
        names = tuple(t.name for t in tasks)
        k = len(tasks)
        history = History(names)
        state = FitState(model, objective, tasks, device)
        params = [*model.parameters(), *objective.parameters()]
        # the fused kernel updates every parameter in one pass: on the CPU it is several times
        # faster than the default per-tensor loop, with the same update rule
        fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        optimizer = torch.optim.Adam(params, lr=self.lr, eps=self.eps, fused=fused or None)
        shuffle = torch.Generator().manual_seed(self.seed)
        learns_after_step = type(objective).after_step is not Objective.after_step
        step_tensors: dict = {}
        best_value = float("inf")
        best_state = self._snapshot(model, objective)
        for callback in self.callbacks:
            callback.on_fit_start(state)

        with EpochProgress(self.max_epochs, f"{type(objective).__name__}", self.quiet) as bar:
            for epoch in range(1, self.max_epochs + 1):
                state.epoch = epoch
                started = time.perf_counter()
                model.train()
                totals = _EpochTotals(k, device, step_tensors)
                for batch in self._batches(train, shuffle, epoch):
                    losses, positions, features, terms = plan.losses(model, batch, training=True)
                    state.features = features
                    for callback in self.callbacks:
                        callback.on_before_backward(state, losses, positions)
                    optimizer.zero_grad(set_to_none=True)
                    if terms is None:
                        step = objective.backward(losses, positions, features)
                    else:
                        step = objective.backward(losses, positions, features, terms=terms)
                        terms = terms.detach()
                    optimizer.step()
                    if learns_after_step:
                        objective.after_step(lambda b=batch: plan.losses(model, b)[0])
                    totals.add(
                        losses.detach(), positions, batch.counts, step.value, step.weights, terms
                    )
                    state.step += 1
                    state.last_losses, state.last_positions = losses.detach(), positions
                    state.last_weights = step.weights
                    for callback in self.callbacks:
                        callback.on_step_end(state)
                objective.end_epoch()
                stop_losses, stop_terms = self._source_losses(model, plan, stop)
                with torch.no_grad():
                    stop_value = objective.value(stop_losses)
                record = totals.record(epoch, names, stop_losses, stop_value)
                totals.record_terms(record, [t.name for t in objective.terms], stop_terms)
                if self.track_metrics:
                    record.update(self._stop_metrics(model, plan, stop))
                record["seconds"] = time.perf_counter() - started
                history.records.append(record)
                for callback in self.callbacks:
                    callback.on_epoch_end(state, record)
                self._check_finite(record, totals.bad, history, model, objective, best_state)
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

    def losses_on(self, model: MultiTaskModel, tasks: Sequence[Task], data: Data) -> Tensor:
        """Each task's mean loss over ``data`` (labelled rows only), without gradients."""
        tasks = _check_tasks(model, tasks)
        device = next(model.parameters()).device
        source = make_source(data, "evaluation", tasks, device, sparse_input=self.sparse_input)
        plan = LossPlan(model, tasks, source)
        plan.adopt(source)
        return self._source_losses(model, plan, source)[0]

    def _source_losses(
        self, model: MultiTaskModel, plan: LossPlan, source: SharedSource | PerTaskSource
    ) -> tuple[Tensor, Tensor | None]:
        """Mean loss per task over a whole source, weighting each chunk by its labelled rows,
        and the structured terms' means over its rows (None without terms)."""
        k = len(plan.tasks)
        device = next(model.parameters()).device
        total = torch.zeros(k, device=device)
        counts = np.zeros(k)
        term_total, rows = None, 0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in source.chunks(self.eval_batch_size):
                losses, positions, _, terms = plan.losses(model, batch)
                if terms is not None:
                    n = batch.x.shape[0]
                    term_total = terms * n if term_total is None else term_total + terms * n
                    rows += n
                positions = positions or tuple(range(k))
                weights = torch.tensor(batch.counts, dtype=losses.dtype, device=device)
                total.index_add_(0, torch.tensor(positions, device=device), losses * weights)
                counts[list(positions)] += batch.counts
        model.train(was_training)
        means = total / torch.tensor(counts, dtype=total.dtype, device=device)
        return means, None if term_total is None else term_total / rows

    def _stop_metrics(
        self, model: MultiTaskModel, plan: LossPlan, source: SharedSource | PerTaskSource
    ) -> dict[str, float]:
        tasks = plan.tasks
        outputs: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
        targets: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in source.chunks(self.eval_batch_size):
                if isinstance(batch, SharedBatch):
                    out = model(batch.x)
                    y = plan.task_targets(batch.y)
                    parts = [
                        (t, out[t.name], y[t.name], (batch.masks or {}).get(t.name)) for t in tasks
                    ]
                else:
                    parts = []
                    for part in batch.parts:
                        task = tasks[part.position]
                        out = model.heads_forward(model.features(part.x), task.name)
                        parts.append((task, out, part.y, part.mask))
                for task, out, y, mask in parts:
                    out = task.output(out)
                    if mask is not None:
                        out, y = out[mask], y[mask]
                    outputs[task.name].append(out.cpu().numpy())
                    targets[task.name].append(y.cpu().numpy())
        model.train(was_training)
        record = {}
        for task in tasks:
            values = task_metrics(
                task, np.concatenate(outputs[task.name]), np.concatenate(targets[task.name])
            )
            record.update({f"stop_{metric}/{task.name}": v for metric, v in values.items()})
        return record

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
        train = [n for n in names if not math.isfinite(record[f"train_loss/{n}"])]
        if max(bad_steps) > 0:
            # a NaN spreads to every task through the shared weights; name the first to break
            culprits = [n for n, b in zip(names, bad_steps, strict=True) if b == max(bad_steps)]
            where = "training"
        elif train:  # infinite, never NaN
            culprits, where = train, "training"
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
