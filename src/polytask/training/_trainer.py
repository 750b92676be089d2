"""The fit loop: the optimizer steps the engine's update; callbacks stop, restore and save."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import pickle
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .._checks import as_int, differences
from .._device import parse_device, resolve_device
from ..data import MultiTargetData, Schedule, TaskData
from ..engine import GradientEngine
from ..engine._reduce import Reducer
from ..evaluation._metrics import task_metrics
from ..models._protocol import model_dtype
from ..objectives import Objective, make_objective
from ..objectives._streams import seed_streams, stream_seed
from ..tasks import Task
from ._callbacks import BestWeights, Callback, Checkpoint, EarlyStopping, NonFiniteCheck
from ._distributed import Shard, setup
from ._history import History
from ._losses import LossPlan
from ._progress import EpochProgress
from ._sources import (
    PerTaskBatch,
    PerTaskSource,
    SharedBatch,
    SharedSource,
    Source,
    make_source,
)

Data = MultiTargetData | Mapping[str, TaskData]
PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Lightning's names for the precision of a fit -> the autocast dtype of its forward pass."""
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _with(terms: Tensor | None, penalty: Tensor) -> Tensor:
    """The structured terms plus the model's own penalty, as one vector for the engine."""
    penalty = penalty.reshape(1)
    return penalty if terms is None else torch.cat([terms, penalty])


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite during training. The model holds the best weights so far
    and :attr:`history` the epochs up to the failure."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


@dataclass
class FitState:
    """What callbacks see of a fit, and how they act on it (:meth:`request_stop`)."""

    model: nn.Module
    objective: Objective
    tasks: tuple[Task, ...]
    device: torch.device
    history: History
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    callbacks: tuple[Callback, ...] = ()
    engine: GradientEngine | None = None
    epoch: int = 0
    step: int = 0
    last_losses: Tensor | None = None
    """The last step's task losses (read-only: the epoch's totals hold the same tensor)."""
    last_positions: tuple[int, ...] | None = None
    last_weights: Tensor | None = None
    features: Tensor | Mapping[str, Tensor] | None = None
    """What the heads read in the current step (see :meth:`GradientEngine.split`); None
    between epochs."""
    bad_steps: list[float] = field(default_factory=list)
    """Per task, this epoch's steps with a NaN loss."""
    train_rows: list[float] = field(default_factory=list)
    """Per task, this epoch's training rows (0: the task had no batch; its train loss is
    NaN)."""
    stop_reason: str = ""
    stop_is_error: bool = False
    shuffle: torch.Generator | None = None
    """The generator that shuffles the rows of a shared dataset (a checkpoint saves it)."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """What a checkpoint must match to be resumed: the configuration, model, tasks and data."""
    scaler: Any = None
    """The gradient scaler of a float16 fit (``precision="16-mixed"``; a checkpoint saves it)."""

    @property
    def should_stop(self) -> bool:
        return bool(self.stop_reason)

    def request_stop(self, reason: str, error: bool = False) -> None:
        """End the fit after this epoch; with ``error`` it ends with
        :class:`NonFiniteLossError`."""
        if not self.stop_reason:
            self.stop_reason, self.stop_is_error = reason, error


def _qualified(factory: Any) -> str:
    """A factory's name for the fingerprint: a function by its source location and the plain
    values it closes over, a ``functools.partial`` by its function and arguments."""
    if factory is None:
        return "default"
    if isinstance(factory, functools.partial):
        arguments = [_stable_repr(a) for a in factory.args]
        arguments += [f"{k}={_stable_repr(v)}" for k, v in sorted(factory.keywords.items())]
        return f"partial({_qualified(factory.func)}, {', '.join(arguments)})"
    code = getattr(factory, "__code__", None)
    where = f" at {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    closed = [c.cell_contents for c in getattr(factory, "__closure__", None) or ()]
    plain = [_stable_repr(v) for v in closed if isinstance(v, int | float | str | bool | tuple)]
    over = f" with {', '.join(plain)}" if plain else ""
    return f"{getattr(factory, '__qualname__', type(factory).__qualname__)}{where}{over}"


def _stable_repr(value: Any) -> str:
    """``repr`` without memory addresses (``<function f at 0x...>``), which differ between
    runs of the same script."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _optimizer_settings(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class and each group's hyperparameters as built (before a scheduler
    moves the learning rate): what a factory that closes over a variable set."""
    groups = []
    for group in optimizer.param_groups:
        values = {
            k: (v.tolist() if isinstance(v, Tensor) else v)
            for k, v in group.items()
            if k != "params"
        }
        groups.append({"params": len(group["params"]), **dict(sorted(values.items()))})
    return f"{type(optimizer).__qualname__} {groups}"


def _refuse_another_configuration(path: Any, theirs: Mapping[str, Any], ours: Mapping[str, Any]):
    """Refuse a checkpoint whose fingerprint differs from this fit's, naming what differs."""
    differs = differences(theirs, ours)
    if differs:
        raise ValueError(
            f"the checkpoint {path} is from another configuration; "
            + "; ".join(differs)
            + " (remove it, or give another checkpoint folder)"
        )


def _resume_point(
    callbacks: Sequence[Callback],
    fingerprint: dict[str, Any],
    device: torch.device,
    shard: Shard | None = None,
) -> dict[str, Any] | None:
    """The checkpoint a fit resumes from (None for a fresh fit); one of another configuration
    is refused, naming what differs. In a data-parallel fit rank 0 reads it and sends it to
    the others (the folder need not be shared between machines)."""
    if shard is None:
        return _read_resume_point(callbacks, fingerprint, device)
    import torch.distributed as dist

    message: list[Any] = [None]
    failure: Exception | None = None
    if shard.rank == 0:
        try:
            message = [("ok", _read_resume_point(callbacks, fingerprint, torch.device("cpu")))]
        except Exception as error:  # any failure must reach the ranks waiting for the state
            failure = error
            text = (
                str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            )
            message = [("error", text)]
    dist.broadcast_object_list(message, src=0)
    kind, payload = message[0]
    if kind == "error":
        if failure is not None and not isinstance(failure, ValueError):
            raise ValueError(f"the checkpoint cannot be read: {payload}") from failure
        if failure is not None:
            raise failure
        raise ValueError(payload)
    if payload is not None and device.type != "cpu":
        payload = _to_device(payload, device)
    return payload


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, nn.Module):
        return value.to(device)
    return value


def _read_resume_point(
    callbacks: Sequence[Callback], fingerprint: dict[str, Any], device: torch.device
) -> dict[str, Any] | None:
    saves = [c for c in callbacks if isinstance(c, Checkpoint)]
    if not saves or not saves[0].path.exists():
        return None
    path = saves[0].path
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        # truncated, empty or not a checkpoint: name the file
        raise ValueError(
            f"the checkpoint {path} cannot be read ({type(error).__name__}: {error}); remove "
            "it to start afresh"
        ) from error
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        raise ValueError(f"{path} is not a polytask checkpoint; remove it to start afresh")
    # (the optimizer's settings join the fingerprint, and are compared, once it is built)
    _refuse_another_configuration(path, saved["fingerprint"], fingerprint)
    return saved


def _restore(saved: dict[str, Any], state: FitState, max_epochs: int, rank: int = 0) -> int:
    """Put a fit's saved state back (after the callbacks' ``on_fit_start``); the first epoch
    to run."""
    if saved["epoch"] > max_epochs:
        raise ValueError(
            f"the checkpoint is at epoch {saved['epoch']}, past max_epochs={max_epochs}: give "
            f"max_epochs >= {saved['epoch']} to finish from it, or another checkpoint folder"
        )
    state.optimizer.load_state_dict(saved["optimizer"])
    if state.scheduler is not None:
        state.scheduler.load_state_dict(saved["scheduler"])
    restored = History.from_dict(saved["history"])
    state.history.records[:] = restored.records
    state.history.best_epoch = restored.best_epoch
    others = [c for c in state.callbacks if not isinstance(c, Checkpoint)]
    kinds = [type(c).__qualname__ for c in others]
    if kinds != saved["callback_types"]:
        raise ValueError(
            f"the checkpoint holds the state of the callbacks {saved['callback_types']}, this "
            f"fit has {kinds}: resume with the same callbacks"
        )
    for callback, callback_state in zip(others, saved["callbacks"], strict=True):
        callback.load_state_dict(callback_state)
    ranks = saved["rng"].get("ranks")
    if ranks is not None:  # a data-parallel fit: each process its own dropout stream
        own = ranks[rank]
        torch.set_rng_state(own["torch"].cpu())
        if own["cuda"] is not None and state.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"].cpu(), state.device)
    else:
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["rng"]["cuda"]])
    state.shuffle.set_state(saved["rng"]["shuffle"].cpu())
    if state.scaler is not None and saved.get("scaler") is not None:
        state.scaler.load_state_dict(saved["scaler"])
    if saved.get("engine") is not None:
        state.engine.load_state_dict(saved["engine"])
    state.step = saved["step"]
    state.epoch = saved["epoch"]
    if saved["stop_reason"]:
        state.request_stop(saved["stop_reason"], error=saved["stop_is_error"])
        state.history.stopped_early = True
        state.history.stop_reason = saved["stop_reason"]
    return saved["epoch"] + 1


def _digest_array(digest: Any, array: Tensor | np.ndarray | sp.spmatrix | None) -> None:
    """Add an array's shape, dtype and values (a sparse matrix's indices and values) to
    ``digest``."""
    if array is None:
        return
    if sp.issparse(array):
        csr = sp.csr_matrix(array)
        pieces = [csr.indptr, csr.indices, csr.data]
    else:
        # raw bytes of a tensor: numpy has no bfloat16
        pieces = [
            array.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            if isinstance(array, Tensor)
            else np.ascontiguousarray(array)
        ]
    digest.update(repr((tuple(array.shape), str(array.dtype))).encode())
    for piece in pieces:
        digest.update(piece.tobytes())


def _warn_rounded_inputs(*splits: Any) -> None:
    """Say when a float64 model reads inputs that were given in float64 and stored in
    float32 (the containers' default): the fit is float64, its data are not."""
    for name, data in zip(("train", "stop"), splits, strict=True):
        parts = data.values() if isinstance(data, Mapping) else [data]
        if any(getattr(part, "rounded", False) for part in parts):
            warnings.warn(
                f"{name} data: the inputs were given in float64 and stored in float32 (the "
                "default dtype of MultiTargetData and TaskData), so this float64 model reads "
                "them rounded; build the data with dtype=torch.float64 to keep them exact",
                stacklevel=3,
            )


def _route_hint(model: nn.Module) -> str:
    """What to pass to as_multitask for a module that does not name its tasks."""
    parameters = list(inspect.signature(model.forward).parameters)
    if len(parameters) > 1:
        return f"route={parameters[1]!r}, keys=[...]"
    return "shared='<trunk submodule>'"


def _check_tasks(model: nn.Module, tasks: Sequence[Task]) -> tuple[Task, ...]:
    names = [t.name for t in tasks]
    if not tasks:
        raise ValueError("fit needs at least one task")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    model_names = getattr(model, "task_names", None)
    if model_names is None:
        raise TypeError(
            f"{type(model).__name__} does not tell polytask its tasks: wrap it as "
            f"pt.as_multitask(model, tasks={names}, {_route_hint(model)}) (see 'Use your own "
            "model' in the README)"
        )
    if set(names) != set(model_names):
        raise ValueError(f"the tasks {names} do not match the model's heads {list(model_names)}")
    return tuple(tasks)


def _check_outputs(
    model: nn.Module, tasks: Sequence[Task], source: Source, precision: str = "32"
) -> None:
    """One forward pass on a couple of rows, so a head of the wrong width or a trunk that cannot
    take the inputs fails before any step. It tracks gradients, so a wrapped module whose shared
    part is not named has it read off the graph here. It runs in the fit's precision, so an
    operation that autocast cannot run (a sparse product in bfloat16) fails here too."""
    batch = next(source.chunks(2))
    x = batch.x if isinstance(batch, SharedBatch) else batch.parts[0].x
    was_training = model.training
    model.eval()
    try:
        with _autocast(precision, x.device):
            outputs = model(x)
    except (RuntimeError, TypeError, ValueError) as error:  # ValueError: a module's own check
        if PRECISIONS[precision] is not None:
            raise ValueError(
                f"precision={precision!r}: the model cannot run its forward pass under "
                f"autocast on these inputs ({error}); use precision='32'"
                + (" or dense inputs (sparse_input=False)" if x.layout != torch.strided else "")
            ) from error
        failing = _failing_routes(model, x, tasks)
        if failing:  # the shared part reads the inputs; these tasks' own parts fail on it
            name, reason = failing[0]
            if reason.startswith(f"task {name!r}: "):  # the model named the task already
                raise ValueError(reason) from error
            raise ValueError(
                f"task {name!r}: its head cannot take what the shared part gives for inputs "
                f"of shape (n, {source.n_features[0]}): {reason}"
            ) from error
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


def _chunk_sizes(plan: LossPlan, batch: Any, positions: Sequence[int]) -> list[float]:
    """What each present task's loss of an evaluation chunk is a mean over: its labelled rows,
    or for a multilabel task with the default loss its known label entries (a mean over
    entries, which rows would weigh wrongly across chunks with different missing entries)."""
    sizes = [float(c) for c in batch.counts]
    for j, i in enumerate(positions):
        task = plan.tasks[i]
        if task.kind != "multilabel" or task.loss is not None or not task.allow_missing:
            continue  # every entry known: rows weigh the chunk means as entries would
        if isinstance(batch, SharedBatch):
            y = plan.task_targets(batch.y)[task.name]
            mask = (batch.masks or {}).get(task.name)
        else:
            part = next(p for p in batch.parts if p.position == i)
            y, mask = part.y, part.mask
        known = ~torch.isnan(y)
        if mask is not None:
            known = known & mask.reshape(-1, *([1] * (y.ndim - 1)))
        sizes[j] = float(known.sum())
    return sizes


def _check_custom_losses(model: nn.Module, plan: LossPlan, source: Source) -> None:
    """A task's own ``loss`` on a couple of rows: it must give the batch's loss as a scalar
    tensor on the graph, or the step's loss vector fails to form (a per-row loss) or the task
    gets no gradient (a float, a detached tensor)."""
    custom = [t for t in plan.tasks if t.loss is not None]
    if not custom:
        return
    batch = next(iter(source.chunks(2)))
    if isinstance(batch, SharedBatch):
        pairs = [(batch.x, plan.task_targets(batch.y), batch.masks or {})]
    else:
        pairs = [
            (p.x, {plan.tasks[p.position].name: p.y}, {plan.tasks[p.position].name: p.mask})
            for p in batch.parts
        ]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for x, targets, masks in pairs:
                outputs = model(x)
                for task in custom:
                    mask = masks.get(task.name)
                    if task.name not in targets or (mask is not None and not bool(mask.any())):
                        continue
                    output = task.output(outputs[task.name])
                    value = task.compute_loss(output, targets[task.name], mask)
                    if not isinstance(value, Tensor) or value.ndim != 0:
                        got = (
                            f"shape {tuple(value.shape)}"
                            if isinstance(value, Tensor)
                            else type(value).__name__
                        )
                        raise ValueError(
                            f"task {task.name!r}: its loss returned {got} for {len(x)} rows; it "
                            "must return the batch's loss as a scalar tensor (reduce it, e.g. "
                            "with .mean())"
                        )
                    if not value.requires_grad:
                        raise ValueError(
                            f"task {task.name!r}: its loss is not on the graph of the model's "
                            "output (detached, or computed outside torch): the task would get "
                            "no gradient"
                        )
    finally:
        model.train(was_training)


def _failing_routes(model: nn.Module, x: Tensor, tasks: Sequence[Task]) -> list[tuple[str, str]]:
    """The tasks whose own route (``model(x, task=...)``) fails while another task's runs:
    ``(task, error)``; empty when every route fails alike (the shared part cannot take ``x``)
    or the model does not route by task."""
    failing, ran = [], False
    for task in tasks:
        try:
            model(x, task=task.name)
        except TypeError:  # no task= routing: nothing to tell the tasks apart with
            return []
        except (RuntimeError, ValueError) as error:  # a product's shapes, a module's check
            failing.append((task.name, str(error)))
        else:
            ran = True
    return failing if ran else []


def _autocast(precision: str, device: torch.device):
    """Autocast of the forward pass in the fit's precision (nothing at 32 bits)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _grad_clearer(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``optimizer.zero_grad(set_to_none=True)``: for torch's own implementation the same loop
    over the parameters without its per-call profiler scope and grouping, about 25 us a step
    on a CPU; an optimizer with its own ``zero_grad`` keeps it."""
    if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: optimizer.zero_grad(set_to_none=True)

    def clear() -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    return clear


class _StepModule(nn.Module):
    """A step's forward pass (batch -> task losses) as a module, so that DDP wraps it: its
    hooks then all-reduce the gradients of the ordinary backward that follows."""

    def __init__(self, model: nn.Module, plan: LossPlan) -> None:
        super().__init__()
        self.model = model
        self.plan = plan

    def forward(self, batch: Any):
        return self.plan.losses(self.model, batch, training=True)


@dataclass
class _Parallel:
    """A data-parallel fit's shard, its reducer and (when DDP reduces) the wrapped step."""

    shard: Shard
    reducer: Reducer
    runner: nn.Module | None
    """The DDP-wrapped forward of a step; None when the engine reduces the gradients."""
    _factors: dict = field(default_factory=dict)

    def factor(self, batch: SharedBatch | PerTaskBatch, device: torch.device):
        """What this process's task losses are multiplied by so that the global loss is their
        mean over the processes: ``W`` times its share of each task's rows (None when 1)."""
        world = self.shard.world
        if isinstance(batch, SharedBatch) and batch.local_counts is None:
            factor = world * batch.share
            return None if abs(factor - 1.0) < 1e-12 else factor
        # per task: its share of the rows, or with missing labels of the step's labels
        if isinstance(batch, SharedBatch):
            shares = [c / n for c, n in zip(batch.local_counts, batch.counts, strict=True)]
        else:
            shares = [p.share for p in batch.parts]
        factors = tuple(world * share for share in shares)
        if all(abs(f - 1.0) < 1e-12 for f in factors):
            return None
        tensor = self._factors.get(factors)
        if tensor is None:  # one copy to the device per combination seen
            if len(self._factors) >= 4096:  # label shares vary from step to step: bounded
                self._factors.clear()
            tensor = self._factors[factors] = torch.tensor(factors, device=device)
        return tensor

    def scalar(self, batch: SharedBatch | PerTaskBatch) -> float:
        """The factor of a step-wide penalty (structured terms, a model's regularization, which
        read every row of the slice): ``W`` times this process's share of the step's rows, the
        mean over the tasks' batches for per-task batches. (With missing labels the tasks'
        loss factors are shares of their labels instead.)"""
        world = self.shard.world
        if isinstance(batch, SharedBatch):
            return world * batch.share
        return world * sum(part.row_share for part in batch.parts) / len(batch.parts)


class _EpochTotals:
    """Per-epoch sums kept on the device, read back once at the end of the epoch."""

    HELD = 1024
    """The most steps' loss vectors held before they are added to the sums."""

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
        # the loss vectors of steps where every task was present, summed at the end of the
        # epoch (and every HELD steps): a few tensor ops per epoch instead of three per step
        # (each a kernel launch on a GPU, a few microseconds of dispatch on a CPU, against a
        # step of about a millisecond). A loss vector is the step's own new tensor; the
        # weights and value are added at once, as a method may return its state's tensor and
        # change it in place later (Nash-MTL between its solves)
        self._losses: list[Tensor] = []
        self._rows: list[int] = []

    def _flush(self) -> None:
        """Add the held steps' losses to the sums."""
        if not self._losses:
            return
        # summed in float32 at least: bfloat16 holds integers exactly only to 256
        dtype = torch.promote_types(self._losses[0].dtype, self.loss_sum.dtype)
        losses = torch.stack(self._losses).to(dtype)  # (steps, k)
        rows = torch.tensor(self._rows, dtype=dtype, device=self.device)
        self.loss_sum.add_((losses * rows[:, None]).sum(0).to(self.loss_sum.dtype))
        self.bad_steps.add_((losses != losses).sum(0))
        self.rows += sum(self._rows)
        self._losses, self._rows = [], []

    def reduce(self, reducer: Reducer) -> None:
        """Combine the processes' totals (their losses are shares of the global losses, whose
        mean over the processes is the global loss); NaN steps: the most of any process."""
        self._flush()
        parts = [self.loss_sum, self.weight_sum, self.value_sum]
        if self.term_sum is not None:
            parts.append(self.term_sum)
        means = reducer.mean(parts)
        self.loss_sum, self.weight_sum, self.value_sum = means[:3]
        if self.term_sum is not None:
            self.term_sum = means[3]
        self.bad_steps = reducer.maximum(self.bad_steps)

    def add(
        self,
        losses: Tensor,
        positions: tuple[int, ...] | None,
        counts: list[int],
        value: Tensor,
        weights: Tensor,
        terms: Tensor | None = None,
    ) -> None:
        if positions is None:  # every task, all with the same rows: held, summed later
            self._losses.append(losses)
            self._rows.append(counts[0])
            if len(self._losses) >= self.HELD:
                self._flush()
        else:
            # the products in float32 at least: bfloat16 holds integers exactly only to 256
            dtype = torch.promote_types(losses.dtype, self.loss_sum.dtype)
            key = (positions, tuple(counts), dtype)
            if key not in self._cache:
                self._cache[key] = (
                    torch.tensor(positions, device=self.device),
                    torch.tensor(counts, dtype=dtype, device=self.device),
                )
            index, rows = self._cache[key]
            self.rows[list(positions)] += counts
            self.loss_sum.index_add_(0, index, (losses.to(dtype) * rows).to(self.loss_sum.dtype))
            broken = losses != losses  # NaN: a cheaper test than isfinite
            self.bad_steps.index_add_(0, index, broken.to(self.bad_steps.dtype))
        self.value_sum.add_(value)
        self.weight_sum.add_(weights)
        if terms is not None:
            if self.term_sum is None:
                self.term_sum = torch.zeros_like(terms)
            self.term_sum.add_(terms)
        self.steps += 1

    def record(
        self,
        epoch: int,
        names: tuple[str, ...],
        stop_losses: Tensor,
        stop_value: Tensor,
        criterion: Callable[[Tensor], Tensor],
    ) -> dict[str, float]:
        """The epoch's record. ``train_loss`` and ``stop_loss`` are the same quantity, the
        objective's stop criterion (``criterion``, i.e. ``objective.value``) of the epoch's
        mean task losses on each set; ``train_combined`` is the mean over the steps of what
        each step minimised (for a learned or moving weighting, a different scale). A task
        that got no training rows this epoch (a sampling schedule on small data) has no train
        loss: its ``train_loss/<task>`` and ``train_loss`` are NaN, a gap in the curves, not a
        criterion over fewer tasks, which would be another quantity than ``stop_loss``."""
        self._flush()
        k, steps = len(names), max(self.steps, 1)
        rows = torch.as_tensor(self.rows, dtype=self.loss_sum.dtype, device=self.device)
        with torch.no_grad():
            train_value = criterion(self.loss_sum / rows)  # NaN (0 / 0) with an absent task
        parts = [self.loss_sum, self.weight_sum / steps, stop_losses, self.bad_steps]
        ends = [(self.value_sum / steps)[None], stop_value[None], train_value.reshape(1)]
        flat = torch.cat([*parts, *ends]).tolist()
        self.bad = flat[3 * k : 4 * k]
        record: dict[str, float] = {
            "epoch": epoch,
            "train_loss": flat[4 * k + 2],
            "stop_loss": flat[4 * k + 1],
            "train_combined": flat[4 * k],
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
    """Fits a multi-task model: the optimizer steps the gradient engine's update; callbacks
    stop early, restore the best weights, check for NaN and save checkpoints.

    Constructor arguments only store configuration (and check it); :meth:`fit` does the work.

    Parameters
    ----------
    objective
        How task losses become one update: an :class:`~polytask.objectives.Objective` or its
        name (``"mean"``, ``"uw"``, ``"upgrad@repr"``...).
    lr, eps
        The default optimizer's (Adam) learning rate and epsilon.
    batch_size
        Rows per training step (per task, with one dataset per task). Under ``torchrun`` it
        is the global batch, summed over the processes (see "Data parallelism" below).
    max_epochs
        Upper bound on epochs.
    patience
        Adds ``EarlyStopping(patience)`` on the stop-set criterion; ``None`` trains
        ``max_epochs`` epochs. The best epoch's weights are restored either way
        (:class:`~polytask.training.BestWeights`).
    seed
        Seeds shuffling, schedules and every random draw of the fit (dropout included) without
        touching the caller's global RNG. The same seed gives a bit-identical history on the CPU.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ... The data are moved to the
        device once; steps make no host copies (sparse inputs: one copy of each CSR batch).
    quiet
        No progress bar.
    callbacks
        :class:`~polytask.training.Callback` s. One of the class of a default
        (``EarlyStopping``, ``BestWeights``, ``NonFiniteCheck``) replaces that default.
    schedule
        With one dataset per task: how their batches are mixed into steps (a
        :class:`~polytask.Schedule` or its kind, e.g. ``"round_robin"``).
    sparse_input
        Sparse (CSR) inputs reach the model as torch sparse tensors (``nn.Linear`` accepts
        them); ``False`` densifies each batch, and each evaluation chunk of up to
        ``eval_batch_size`` rows (lower it for wide inputs: 8192 rows of 200,000 columns are
        6.5 GB in float32).
    track_metrics
        Record each task's metrics on the stop set every epoch (``stop_<metric>/<task>``).
    optimizer
        ``optimizer(parameters)`` -> a ``torch.optim.Optimizer`` over the model's and the
        method's parameters; default Adam (``lr``, ``eps``; the fused kernel on CPU and CUDA).
    scheduler
        ``scheduler(optimizer)`` -> a learning-rate scheduler, stepped after each epoch
        (``ReduceLROnPlateau`` is given the stop-set criterion); the History records ``lr``.
    clip_grad_norm
        Clip the gradients' total norm to this value before each optimizer step.
    checkpoint
        A folder: the fit's whole state is saved there at the end of every epoch
        (:class:`~polytask.Checkpoint`), and a fit that finds a checkpoint of the same
        configuration there resumes from it, finishing with the same weights and history as a
        fit that was never interrupted (bit for bit on the CPU). A checkpoint of another
        configuration is refused, naming what differs.
    precision
        ``"32"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (Lightning's names): the
        training forward pass runs under ``torch.autocast`` in bfloat16 or float16, the weights
        and the optimizer stay float32; float16 adds a gradient scaler
        (``torch.amp.GradScaler``, saved in the checkpoint). Gramians, solvers and task weights
        are always computed in float32 from unscaled gradients, so no method's update depends
        on the loss scale. The stop set is evaluated in float32. Refused before the first step:
        a model that is not float32, bfloat16 on a GPU without it, and a forward pass autocast
        cannot run (sparse inputs).

    Data parallelism
    ----------------
    Started by ``torchrun`` (or in a script that initialised ``torch.distributed``), a fit runs
    data-parallel with no change to the script (:mod:`polytask.training._distributed`):
    ``batch_size`` is the global batch, each process keeps a contiguous slice of every step's
    rows, and ``W`` processes make the update one process makes on the whole batch, for every
    method: DDP all-reduces the gradients of loss-level methods and of the representation path
    (which also all-reduces its ``T x T`` Gramian, the heads' gradients with it); the exact
    and naive paths reduce-scatter the ``T x P`` Jacobian, all-reduce the shards' Gramians and
    all-gather the update (DB-MTL all-reduces the Jacobian whole), then average the heads'
    gradients, the forward pass skipping DDP as ``no_sync`` would; methods whose state reads
    the losses
    (DWA, FAMO, uncertainty, IMTL-L, GradNorm, DB-MTL...) see the global losses. The stop set is
    evaluated whole on every process; every process returns the same History, and only rank 0
    writes the checkpoint (:func:`~polytask.training.is_main_process`). Each process draws
    its own dropout masks (a stream of the seed per rank) while the methods' draws (shuffles,
    RLW's weights) come from the seed alike on every process. Missing labels train too (each
    process weighs its losses by its share of the step's labels); refused before the first
    step: a user's loaders with missing labels (see :meth:`fit`).

    Examples
    --------
    >>> import torch
    >>> from polytask import MultiTaskModel, Task, make_hetero, mlp, split
    >>> from torch import nn
    >>> train, stop, _ = split(make_hetero(400, n_tasks=2))
    >>> model = MultiTaskModel(mlp(1, 8, 2), {t: nn.Linear(8, 1) for t in ("task0", "task1")})
    >>> tasks = [Task("task0"), Task("task1")]
    >>> trainer = Trainer(
    ...     "geometric", max_epochs=3, quiet=True,
    ...     optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    ...     scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    ... )
    >>> history = trainer.fit(model, tasks, train, stop)
    >>> history["lr"]
    [0.01, 0.005, 0.0025]
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
    optimizer: OptimizerFactory | None = None
    scheduler: SchedulerFactory | None = None
    clip_grad_norm: float | None = None
    checkpoint: str | os.PathLike[str] | None = None
    precision: str = "32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        # a float or a bool would be taken as a count (True as 1) or fail deep in torch
        for name in ("batch_size", "max_epochs", "eval_batch_size"):
            setattr(self, name, as_int(getattr(self, name), name))
        if self.patience is not None:
            self.patience = as_int(self.patience, "patience (or None)")
        self.seed = as_int(self.seed, "seed", minimum=0)
        if not (0 < self.lr < float("inf") and 0 < self.eps < float("inf")):
            raise ValueError(
                f"lr and eps must be positive and finite, got lr={self.lr}, eps={self.eps}"
            )
        clip = self.clip_grad_norm
        if clip is not None and not 0 < clip < float("inf"):
            raise ValueError(f"clip_grad_norm must be positive and finite, got {clip}")
        if self.device != "auto":  # a name torch does not know fails here; availability in fit
            parse_device(self.device)
        if isinstance(self.objective, str):
            make_objective(self.objective)  # an unknown name fails here, not in fit
        elif not isinstance(self.objective, Objective):
            raise TypeError(
                f"objective must be an Objective or a method name, got {self.objective!r}"
            )
        if isinstance(self.schedule, str):
            self.schedule = Schedule(self.schedule)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {callback!r}")

    def _callbacks(self) -> tuple[Callback, ...]:
        """The user's callbacks plus the defaults they do not replace."""
        given = tuple(self.callbacks)
        defaults: list[Callback] = [NonFiniteCheck()]
        if self.patience is not None:
            defaults.append(EarlyStopping(self.patience))
        defaults.append(BestWeights())
        if self.checkpoint is not None:
            defaults.append(Checkpoint(self.checkpoint))
        kept = [d for d in defaults if not any(isinstance(c, type(d)) for c in given)]
        # the NaN check and early stopping see the record first, then the user's callbacks,
        # best-weight bookkeeping, and last the checkpoint, which saves what all of them did
        first = [c for c in kept if not isinstance(c, BestWeights | Checkpoint)]
        others = [c for c in given if not isinstance(c, BestWeights | Checkpoint)]
        best = [c for c in (*kept, *given) if isinstance(c, BestWeights)]
        saves = [c for c in (*kept, *given) if isinstance(c, Checkpoint)]
        return (*first, *others, *best, *saves)

    def fit(self, model: nn.Module, tasks: Sequence[Task], train: Data, stop: Data) -> History:
        """Train ``model`` in place on ``train``, early-stopping on ``stop``.

        ``model`` meets the model protocol (:class:`~polytask.MultiTaskModel` or a module wrapped
        by :func:`~polytask.as_multitask`). ``train`` and ``stop`` are each a
        :class:`~polytask.MultiTargetData` (every row carries every task's target) or a mapping
        task -> :class:`~polytask.data.TaskData` (one dataset per task, mixed by
        :attr:`schedule`). Every check on the inputs runs before the first step. Returns the
        :class:`History`; the model ends with the weights of the best epoch.
        """
        device = resolve_device(self.device)
        shard, device = setup(device)
        tasks = _check_tasks(model, tasks)
        dtype = model_dtype(model)  # a float64 model gets float64 inputs and targets
        if dtype == torch.float64:
            _warn_rounded_inputs(train, stop)
        options = {"sparse_input": self.sparse_input, "dtype": dtype}
        train_source = make_source(train, "train", tasks, device, **options)
        stop_source = make_source(stop, "stop", tasks, device, **options)
        if type(train_source) is not type(stop_source):
            raise ValueError("train and stop data must be of the same kind")
        if isinstance(train_source, SharedSource) and self.schedule != Schedule():
            raise ValueError(
                f"schedule={self.schedule} mixes one dataset per task, and the train data is one "
                "MultiTargetData whose every batch holds every task: give one TaskData per "
                "task, or leave schedule at its default"
            )
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
        engine = GradientEngine(model, objective, tasks=[t.name for t in tasks])
        per_task = not isinstance(train_source, SharedSource)
        engine.check(
            per_task_batches=per_task,
            complete=train_source.complete_steps(self.schedule),
            one_task_steps=per_task and self.schedule.kind != "round_robin",
        )
        self._check_precision(model, device)
        _check_outputs(model, tasks, train_source, self.precision)
        plan = LossPlan(model, tasks, train_source, engine.split, objective.terms)
        for source in (train_source, stop_source):
            plan.adopt(source)
        if objective.terms:  # a term's shape errors surface here, before any step
            with torch.no_grad():
                plan.losses(model, next(iter(train_source.chunks(2))))
        _check_custom_losses(model, plan, train_source)
        fingerprint = self._fingerprint(
            model,
            objective,
            tasks,
            train,
            stop,
            processes=1 if shard is None else shard.world,
        )
        parallel = None
        if shard is not None:
            parallel = self._parallel(shard, model, objective, engine, plan, train_source)
        # the methods' own draws (shuffles, random weights) from the seed: alike on every process
        seed_streams(objective, self.seed)  # the engine's method is one of its modules
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # dropout and the forward pass's other draws: each process its own stream, so the
            # processes' slices of a batch get independent masks (rank 0 keeps the seed's)
            rank = 0 if shard is None else shard.rank
            torch.manual_seed(self.seed if rank == 0 else stream_seed(self.seed, rank))
            return self._loop(
                model,
                objective,
                engine,
                plan,
                train_source,
                stop_source,
                device,
                fingerprint,
                parallel,
            )

    def _check_precision(self, model: nn.Module, device: torch.device) -> None:
        """Refuse a precision that cannot work on this model and device, with the reason."""
        if PRECISIONS[self.precision] is None:
            return
        kinds = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if kinds - {torch.float32}:
            raise ValueError(
                f"precision={self.precision!r} autocasts a float32 model; this one has "
                f"parameters of {sorted(str(k) for k in kinds)}: convert it with model.float() "
                "or use precision='32'"
            )
        if (
            self.precision == "bf16-mixed"
            and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ValueError(
                "precision='bf16-mixed': this GPU has no bfloat16 support; use '16-mixed'"
            )

    def _parallel(
        self,
        shard: Shard,
        model: nn.Module,
        objective: Objective,
        engine: GradientEngine,
        plan: LossPlan,
        train: Source,
    ) -> _Parallel:
        """Refuse what cannot run data-parallel, then choose who all-reduces the gradients:
        DDP (an ordinary backward) or the engine (the exact and naive paths)."""
        if isinstance(train, SharedSource | PerTaskSource):
            partial = train.partial_multilabel()
            if partial:
                raise ValueError(
                    f"data-parallel training (torchrun) does not take multilabel tasks with "
                    f"missing entries in labelled rows yet ({partial}): their loss averages over "
                    "the known entries, which the processes would need to count together; fill "
                    "the entries or train on one process"
                )
        elif not train.complete_steps(Schedule("round_robin")):
            raise ValueError(
                "data-parallel training (torchrun) takes missing labels in polytask's datasets "
                "(MultiTargetData, TaskData), not yet in a user's loaders: a process's slice of "
                "a step may hold no label of a task that the others' slices label; pass the "
                "data as datasets, fill the labels or train on one process"
            )
        if hasattr(train, "check_shardable"):  # a user's own loaders
            train.check_shardable()
        method = engine.method
        penalty = bool(objective.terms) or callable(getattr(model, "regularization", None))
        mode = engine.data_parallel_mode(
            penalty=penalty, shared_batches=isinstance(train, SharedSource)
        )
        reducer = Reducer()
        engine.distribute(reducer, mode)
        if mode == "engine":
            moving = [n for n, b in model.named_buffers() if b.is_floating_point()]
            if moving:  # DDP would re-broadcast them each step; the engine's path bypasses it
                raise ValueError(
                    f"{type(method).__name__} on the {engine.path or 'loss-level'} path runs "
                    f"data-parallel outside DDP, which would let the model's buffers {moving[:3]} "
                    "(e.g. BatchNorm statistics) drift apart between processes; use the "
                    "representation path (@repr), a loss-level method, or a model without them"
                )
            reducer.broadcast(model.state_dict().values())
            return _Parallel(shard, reducer, None)
        from torch.nn.parallel import DistributedDataParallel

        step = _StepModule(model, plan)
        if mode == "ddp_shared":  # DDP reduces the trunk; the heads go with the Gramian
            # a user's module learns what its features read (layers before the named trunk)
            # from a tracked forward: run one, in eval mode so no buffer moves, before asking
            first = next(iter(train.chunks(2)))
            was_training = model.training
            model.eval()
            try:
                model.features(first.x)
            finally:
                model.train(was_training)
            shared = {id(p) for p in model.shared_parameters()}
            heads = [(n, p) for n, p in model.named_parameters() if id(p) not in shared]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                step, [f"model.{name}" for name, _ in heads]
            )
            reducer.broadcast([p for _, p in heads])
        # a step without some task leaves its head unused; under "ddp_shared" DDP holds only
        # the shared parameters, which every present task reaches
        complete = mode == "ddp_shared" or train.complete_steps(self.schedule)
        runner = DistributedDataParallel(step, find_unused_parameters=not complete)
        return _Parallel(shard, reducer, runner)

    def _fingerprint(
        self,
        model: nn.Module,
        objective: Objective,
        tasks: Sequence[Task],
        *splits: Data,
        processes: int = 1,
    ) -> dict[str, Any]:
        """What a checkpoint must match: every setting that changes the fit's course (not
        ``max_epochs``, so a finished fit can be extended), the model's structure and parameter
        shapes, the tasks, the number of processes and the data (each split's rows and a digest
        of all of them, dense or sparse, read from the caller's containers on the host). Empty
        when the fit saves no checkpoint. The optimizer's settings join once it is built."""
        if self.checkpoint is None and not any(isinstance(c, Checkpoint) for c in self.callbacks):
            return {}
        digest, rows = hashlib.sha256(), []
        for data in splits:
            if isinstance(data, MultiTargetData):
                rows.append(len(data))
                arrays = [data.x, *data.targets.values(), *(data.masks or {}).values()]
            elif isinstance(data, Mapping) and all(isinstance(d, TaskData) for d in data.values()):
                rows.append({t: len(d) for t, d in data.items()})
                arrays = [a for d in data.values() for a in (d.x, d.y, d.mask)]
            else:  # a loader's own sampler may shuffle: its rows cannot be read in a fixed order
                rows.append("loaders")
                continue
            digest.update(
                repr(list(data.task_names if isinstance(data, MultiTargetData) else data)).encode()
            )
            for array in arrays:
                _digest_array(digest, array)
        settings = {
            name: repr(getattr(self, name))
            for name in (
                "lr",
                "eps",
                "batch_size",
                "patience",
                "seed",
                "schedule",
                "eval_batch_size",
                "track_metrics",
            )
        }
        settings.update(
            sparse_input=repr(self.sparse_input),
            clip_grad_norm=repr(self.clip_grad_norm),
            optimizer=_qualified(self.optimizer),
            scheduler=_qualified(self.scheduler),
            objective=repr(objective),
            # a task's loss and metrics shape the History: a resume must not mix two of them
            tasks=repr(
                [
                    (t.name, t.kind, t.size, _qualified(t.loss), tuple(t.metrics), t.allow_missing)
                    for t in tasks
                ]
            ),
            # the dtype too: a float32 checkpoint would be cast into a float64 model silently
            model=repr({k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}),
            structure=hashlib.sha256(repr(model).encode()).hexdigest()[:16],
            processes=processes,
            rows=repr(rows),
            data=digest.hexdigest()[:16],
            precision=self.precision,
        )
        return settings

    def _make_optimizer(
        self, params: list[nn.Parameter], device: torch.device
    ) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            optimizer = self.optimizer(params)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"optimizer(params) must return a torch Optimizer, got {optimizer!r}"
                )
            return optimizer
        # the fused kernel updates every parameter in one pass: on the CPU it is several times
        # faster than the default per-tensor loop, with the same update rule
        fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        return torch.optim.Adam(params, lr=self.lr, eps=self.eps, fused=fused or None)

    def _batches(
        self, source: Source, shuffle: torch.Generator, epoch: int, shard: Shard | None = None
    ):
        if shard is None:  # the one-process call, unchanged
            if isinstance(source, SharedSource):
                return source.epoch(shuffle, self.batch_size)
            return source.epoch(self.schedule, self.batch_size, seed=self.seed * 1_000_003 + epoch)
        if isinstance(source, SharedSource):
            return source.epoch(shuffle, self.batch_size, shard)
        seed = self.seed * 1_000_003 + epoch
        return source.epoch(self.schedule, self.batch_size, seed=seed, shard=shard)

    def _loop(
        self,
        model: nn.Module,
        objective: Objective,
        engine: GradientEngine,
        plan: LossPlan,
        train: Source,
        stop: Source,
        device: torch.device,
        fingerprint: dict[str, Any],
        parallel: _Parallel | None = None,
    ) -> History:
        tasks = plan.tasks
        names = tuple(t.name for t in tasks)
        history = History(names)
        callbacks = self._callbacks()
        shard = None if parallel is None else parallel.shard
        runner = None if parallel is None else parallel.runner
        saved = _resume_point(callbacks, fingerprint, device, shard)
        if saved is not None:  # the method's whole state, before the optimizer takes its params
            model.load_state_dict(saved["model"])
            objective.__dict__.update(saved["objective"].__dict__)
            engine.follow_objective()  # a WithTerms' method is a new object now
        model_params = list(model.parameters())
        optimizer = self._make_optimizer([*model_params, *engine.parameters()], device)
        if fingerprint:  # checkpointing: the settings the factory gave, before a scheduler
            fingerprint["optimizer settings"] = _optimizer_settings(optimizer)
            if saved is not None:
                theirs = saved["fingerprint"]
                _refuse_another_configuration(
                    next(c for c in callbacks if isinstance(c, Checkpoint)).path,
                    theirs,
                    {"optimizer settings": fingerprint["optimizer settings"]},
                )
        scheduler = None if self.scheduler is None else self.scheduler(optimizer)
        shuffle = torch.Generator().manual_seed(self.seed)
        state = FitState(
            model, objective, tasks, device, history, optimizer, scheduler, callbacks, engine
        )
        state.shuffle, state.fingerprint = shuffle, fingerprint
        scaler = None
        if self.precision == "16-mixed":
            scaler = torch.amp.GradScaler(device.type)
            scaler.scale(torch.ones((), device=device))  # creates the scale tensor
            state.scaler = scaler
        learns_after_step = type(objective).after_step is not Objective.after_step
        # a model penalty that sums over the rows (DSelect-k's): each process adds its rows' sum
        penalty_sums_rows = bool(getattr(model, "regularization_sums_rows", False))
        clear_grads = _grad_clearer(optimizer)
        step_tensors: dict = {}
        for callback in callbacks:
            callback.on_fit_start(state)
        rank = 0 if shard is None else shard.rank
        first_epoch = 1 if saved is None else _restore(saved, state, self.max_epochs, rank)
        try:
            with EpochProgress(self.max_epochs, type(objective).__name__, self.quiet) as bar:
                for epoch in range(first_epoch, self.max_epochs + 1):
                    if state.should_stop:  # resumed from the checkpoint of a finished fit
                        break
                    state.epoch = epoch
                    started = time.perf_counter()
                    model.train()
                    totals = _EpochTotals(len(tasks), device, step_tensors)
                    for batch in self._batches(train, shuffle, epoch, shard):
                        with _autocast(self.precision, device):
                            if runner is None:
                                step_losses = plan.losses(model, batch, training=True)
                            else:
                                step_losses = runner(batch)
                        losses, positions, features, terms, penalty = step_losses
                        factor = None
                        if parallel is not None:
                            factor = parallel.factor(batch, device)
                            if factor is not None:  # this process's share of the global loss
                                losses = losses * factor
                                whole = parallel.scalar(batch)
                                terms = None if terms is None else terms * whole
                                if penalty is not None and not penalty_sums_rows:
                                    penalty = penalty * whole
                            if penalty is not None and penalty_sums_rows:
                                penalty = penalty * parallel.shard.world
                        state.features = features
                        for callback in callbacks:
                            callback.on_before_backward(state, losses, positions)
                        clear_grads()
                        extra = terms if penalty is None else _with(terms, penalty)
                        step = engine.backward(
                            losses,
                            features,
                            positions=positions,
                            terms=extra,
                            scale=None if scaler is None else scaler._scale,
                        )
                        if terms is not None:
                            terms = terms.detach()
                        if scaler is not None:
                            scaler.unscale_(optimizer)
                        if self.clip_grad_norm is not None:
                            nn.utils.clip_grad_norm_(model_params, self.clip_grad_norm)
                        for callback in callbacks:
                            callback.on_before_optimizer_step(state)
                        skipped = False
                        if scaler is None:
                            optimizer.step()
                        else:  # skipped when a gradient overflowed; the scale then shrinks
                            before = scaler.get_scale() if learns_after_step else None
                            scaler.step(optimizer)
                            scaler.update()
                            # (one host read per step, only for FAMO and GradNorm in float16)
                            skipped = before is not None and scaler.get_scale() < before
                        if learns_after_step and skipped:
                            engine.skipped_step()
                        elif learns_after_step:
                            engine.after_step(
                                lambda b=batch, f=factor: self._recompute(model, plan, b, f)
                            )
                        losses = losses.detach()
                        totals.add(losses, positions, batch.counts, step.value, step.weights, terms)
                        state.step += 1
                        state.last_losses, state.last_positions = losses, positions
                        state.last_weights = step.weights
                        for callback in callbacks:
                            callback.on_step_end(state)
                    # the last batch is a view of the epoch's shuffled rows, and the last
                    # step's losses and features hold it through their graph (kept by the
                    # Jacobian paths): let them go before the next epoch shuffles its own
                    batch = step_losses = losses = features = state.features = None
                    engine.end_epoch()
                    stop_losses, stop_terms = self._source_losses(model, plan, stop)
                    with torch.no_grad():
                        stop_value = objective.value(stop_losses)
                    if parallel is not None:  # the same record, and decisions, everywhere
                        totals.reduce(parallel.reducer)
                        stop_losses, stop_value = parallel.reducer.mean([stop_losses, stop_value])
                    record = totals.record(epoch, names, stop_losses, stop_value, objective.value)
                    totals.record_terms(record, [t.name for t in objective.terms], stop_terms)
                    method = getattr(objective, "base", objective)  # a WithTerms' own method
                    if hasattr(method, "diagnostics"):  # e.g. solves that missed tolerance
                        record.update({k: float(v) for k, v in method.diagnostics().items()})
                    if self.track_metrics:
                        record.update(self._stop_metrics(model, plan, stop))
                    record["lr"] = optimizer.param_groups[0]["lr"]
                    record["seconds"] = time.perf_counter() - started
                    if parallel is not None:
                        seconds = torch.tensor([record["seconds"]], dtype=torch.float64)
                        record["seconds"] = float(parallel.reducer.maximum(seconds.to(device)))
                    history.records.append(record)
                    state.bad_steps, state.train_rows = totals.bad, totals.rows.tolist()
                    if scheduler is not None:  # before the callbacks: a checkpoint saves it
                        self._step_scheduler(scheduler, record["stop_loss"])
                    for callback in callbacks:
                        callback.on_epoch_end(state, record)
                    bar.advance(f"stop {record['stop_loss']:.4g}")
                    if state.should_stop:
                        history.stopped_early = True
                        history.stop_reason = state.stop_reason
                        break
        finally:
            for callback in callbacks:
                callback.on_fit_end(state, history)
        if state.stop_is_error:
            history.stop_reason = state.stop_reason.replace(
                "the best epoch's weights", f"the weights of epoch {history.best_epoch}"
            )
            raise NonFiniteLossError(history.stop_reason, history)
        return history

    def _recompute(self, model: nn.Module, plan: LossPlan, batch: Any, factor: Any) -> Tensor:
        """A step's losses again, after the optimizer step (FAMO), as the step saw them."""
        with _autocast(self.precision, next(model.parameters()).device):
            losses = plan.losses(model, batch)[0]
        return losses if factor is None else losses * factor

    @staticmethod
    def _step_scheduler(scheduler: Any, stop_value: float) -> None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(stop_value)
        else:
            scheduler.step()

    def losses_on(self, model: nn.Module, tasks: Sequence[Task], data: Data) -> Tensor:
        """Each task's mean loss over ``data`` (labelled rows only), without gradients."""
        tasks = _check_tasks(model, tasks)
        device = next(model.parameters()).device
        source = make_source(
            data,
            "evaluation",
            tasks,
            device,
            sparse_input=self.sparse_input,
            dtype=model_dtype(model),
        )
        plan = LossPlan(model, tasks, source)
        plan.adopt(source)
        return self._source_losses(model, plan, source)[0]

    def _source_losses(
        self, model: nn.Module, plan: LossPlan, source: Source
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
                losses, positions, _, terms, _ = plan.losses(model, batch)
                if terms is not None:
                    n = batch.x.shape[0]
                    term_total = terms * n if term_total is None else term_total + terms * n
                    rows += n
                positions = positions or tuple(range(k))
                sizes = _chunk_sizes(plan, batch, positions)
                weights = torch.tensor(sizes, dtype=losses.dtype, device=device)
                chunk = (losses * weights).to(total.dtype)  # float32 totals whatever the model
                total.index_add_(0, torch.tensor(positions, device=device), chunk)
                counts[list(positions)] += sizes
        model.train(was_training)
        means = total / torch.tensor(counts, dtype=total.dtype, device=device)
        return means, None if term_total is None else term_total / rows

    def _stop_metrics(self, model: nn.Module, plan: LossPlan, source: Source) -> dict[str, float]:
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
                        out = model(part.x, task=task.name)
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
