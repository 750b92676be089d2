"""Callbacks: code that observes a fit or acts on it through documented hooks.

The trainer owns the loop; everything it does around the loop that a user may want to change
is a callback with its own state: :class:`EarlyStopping`, :class:`BestWeights` (restore the
best epoch's weights), :class:`NonFiniteCheck` and :class:`Checkpoint`. The trainer adds the
first three by default; a callback of the same class in ``callbacks`` replaces the default.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .._processes import alive
from ._distributed import is_distributed, is_main_process

if TYPE_CHECKING:
    from torch import Tensor

    from ._history import History
    from ._trainer import FitState


class Callback:
    """Base class: override the hooks you need.

    A hook may stop the fit (:meth:`FitState.request_stop`), change the optimizer (its learning
    rate, say) or save files; hooks before the optimizer step must not change the model.
    :meth:`state_dict` / :meth:`load_state_dict` carry what a callback remembers (a checkpoint
    saves them).
    """

    def on_fit_start(self, state: FitState) -> None:
        """Before the first step."""

    def on_before_backward(
        self, state: FitState, losses: Tensor, positions: tuple[int, ...] | None
    ) -> None:
        """After the step's losses are computed, before the method's backward pass (the graph
        is alive: a monitor may take per-task gradients here with ``retain_graph``)."""

    def on_before_optimizer_step(self, state: FitState) -> None:
        """After the gradients are in ``.grad`` (and clipped), before the optimizer step."""

    def on_step_end(self, state: FitState) -> None:
        """After each optimizer step (gradients are still in ``.grad``)."""

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        """After each epoch's record is complete (a callback may add columns to it)."""

    def on_fit_end(self, state: FitState, history: History) -> None:
        """After the last epoch, also when the fit stops with an error."""

    def state_dict(self) -> dict[str, Any]:
        """What the callback remembers, for a checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def _gathered_rng_states(device: torch.device) -> list[dict[str, Any]] | None:
    """Every process's global RNG states (the CPU's, and the fit's CUDA device's), in rank
    order, on every process of a data-parallel fit (None in one process)."""
    if not is_distributed():
        return None
    cuda = device.type == "cuda"
    own = {"torch": torch.get_rng_state()}
    own["cuda"] = torch.cuda.get_rng_state(device) if cuda else None
    states: list[Any] = [None] * dist.get_world_size()
    # nccl stages the objects on the current CUDA device: make it the fit's
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        dist.all_gather_object(states, own)
    return states


def _better(mode: str, value: float, best: float) -> bool:
    return value < best if mode == "min" else value > best


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    patience
        Epochs without improvement before stopping.
    monitor
        A History column, by default ``stop_loss`` (the method's criterion on the stop set).
    mode
        ``"min"`` or ``"max"``: whether lower or higher is better.
    min_delta
        An improvement smaller than this does not count.

    Examples
    --------
    >>> stopper = EarlyStopping(patience=2)
    >>> [stopper.improved(v) for v in (1.0, 0.5, 0.7)]
    [True, True, False]
    """

    def __init__(
        self,
        patience: int = 10,
        monitor: str = "stop_loss",
        mode: str = "min",
        min_delta: float = 0.0,
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be positive, got {patience}")
        self.patience, self.monitor, self.mode = patience, monitor, _check_mode(mode)
        self.min_delta = min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.waited = 0

    def improved(self, value: float) -> bool:
        """Record ``value``; whether it improves on the best by more than ``min_delta``."""
        shifted = value + self.min_delta if self.mode == "min" else value - self.min_delta
        if _better(self.mode, shifted, self.best):
            self.best, self.waited = value, 0
            return True
        self.waited += 1
        return False

    def on_fit_start(self, state: FitState) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.waited = 0

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        if self.monitor not in record:
            raise KeyError(f"EarlyStopping: no column {self.monitor!r} in the epoch's record")
        if not self.improved(record[self.monitor]) and self.waited >= self.patience:
            state.request_stop(f"no improvement of the {self.monitor} for {self.patience} epochs")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = state["best"], state["waited"]


class BestWeights(Callback):
    """Keep the weights of the best epoch by ``monitor`` and restore them when the fit ends
    (also when it ends with an error); sets ``history.best_epoch``.

    Parameters
    ----------
    monitor, mode
        As :class:`EarlyStopping`.
    """

    def __init__(self, monitor: str = "stop_loss", mode: str = "min") -> None:
        self.monitor, self.mode = monitor, _check_mode(mode)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.snapshot: tuple[dict, dict] | None = None

    def _take(self, state: FitState) -> tuple[dict, dict]:
        return (
            {k: v.detach().clone() for k, v in state.model.state_dict().items()},
            copy.deepcopy(state.objective.state_dict()),
        )

    def on_fit_start(self, state: FitState) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.snapshot = self._take(state)

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        value = record.get(self.monitor, math.nan)
        if math.isfinite(value) and _better(self.mode, value, self.best):
            self.best, self.best_epoch = value, state.epoch
            self.snapshot = self._take(state)
            state.history.best_epoch = state.epoch

    def on_fit_end(self, state: FitState, history: History) -> None:
        if self.snapshot is not None:
            state.model.load_state_dict(self.snapshot[0])
            state.objective.load_state_dict(self.snapshot[1])
        history.best_epoch = self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.snapshot = state["snapshot"]


class NonFiniteCheck(Callback):
    """End the fit with :class:`~polytask.NonFiniteLossError` when a loss turns NaN or
    infinite, naming the epoch and the task that broke first (the one with the most non-finite
    steps: a NaN spreads to every task through the shared weights within a step)."""

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        names = state.history.task_names
        bad_steps = state.bad_steps
        rows = state.train_rows or [1] * len(names)  # a task without rows has no train loss
        train = [
            n
            for n, r in zip(names, rows, strict=True)
            if r and not math.isfinite(record[f"train_loss/{n}"])
        ]
        if bad_steps and max(bad_steps) > 0:
            culprits = [n for n, b in zip(names, bad_steps, strict=True) if b == max(bad_steps)]
            where = "training"
        elif train:  # infinite, never NaN
            culprits, where = train, "training"
        else:
            culprits = [n for n in names if not math.isfinite(record[f"stop_loss/{n}"])]
            where = "stop-set"
        if not culprits and math.isfinite(record["stop_loss"]):
            return
        subject = f"task {culprits[0]!r}" if len(culprits) == 1 else f"tasks {culprits}"
        if not culprits:
            subject, where = "the objective", "stop-set"
        state.request_stop(
            f"epoch {record['epoch']}: the {where} loss of {subject} became non-finite "
            "(NaN or inf); training stopped and the best epoch's weights restored",
            error=True,
        )


class Checkpoint(Callback):
    """Save the fit's state at the end of every ``every`` epochs: model, optimizer, method,
    scheduler, history, every callback's state and the random generators, written atomically
    (a temporary file, then a rename), so a kill never leaves a half-written checkpoint. The
    trainer resumes from it (``Trainer(checkpoint=DIR)`` adds one); it runs after every other
    callback, so it saves what they did in the epoch.

    Parameters
    ----------
    directory
        Where ``last.pt`` goes (created if needed; checked before the first step).
    every
        Epochs between saves.

    Examples
    --------
    >>> import tempfile
    >>> Checkpoint(tempfile.mkdtemp()).path.name
    'last.pt'
    """

    def __init__(self, directory: str | os.PathLike[str], every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.directory, self.every = Path(directory), every
        self.saved_epochs: list[int] = []

    @property
    def path(self) -> Path:
        return self.directory / "last.pt"

    def on_fit_start(self, state: FitState) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"Checkpoint: cannot create {self.directory}: {error}") from None
        if not os.access(self.directory, os.W_OK):
            raise ValueError(f"Checkpoint: {self.directory} is not writable")
        if is_main_process():
            self._remove_stale_writes()

    def _remove_stale_writes(self) -> None:
        """Delete the temporary files of writes that a kill interrupted (their process is
        gone): each can be as large as a checkpoint, and nothing else would remove them."""
        for leftover in self.directory.glob(".last.*.tmp"):
            parts = leftover.name.split(".")  # ["", "last", pid, uuid, "tmp"]
            if len(parts) != 5 or not parts[2].isdigit() or alive(int(parts[2])):
                continue
            leftover.unlink(missing_ok=True)

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        if state.epoch % self.every:
            return
        # each process draws its own dropout stream: rank 0 saves every process's state
        ranks = _gathered_rng_states(state.device)
        if not is_main_process():  # a data-parallel fit: rank 0 writes, for every process
            self.saved_epochs.append(state.epoch)
            return
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        payload = {
            "epoch": state.epoch,
            "step": state.step,
            "fingerprint": state.fingerprint,
            "model": state.model.state_dict(),
            # the whole method, not only its state_dict: per-epoch averages (DWA), EMAs
            # (DB-MTL, GradVac) and solver state live in plain attributes
            "objective": state.objective,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
            "history": state.history.to_dict(),
            "callbacks": [c.state_dict() for c in state.callbacks if not isinstance(c, Checkpoint)],
            "callback_types": [
                type(c).__qualname__ for c in state.callbacks if not isinstance(c, Checkpoint)
            ],
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": cuda,
                "ranks": ranks,
                "shuffle": None if state.shuffle is None else state.shuffle.get_state(),
            },
            "stop_reason": state.stop_reason,
            "stop_is_error": state.stop_is_error,
            "scaler": None if state.scaler is None else state.scaler.state_dict(),
            "engine": state.engine.state_dict(),
        }
        temporary = self.directory / f".last.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            # a new file with an ordinary file's mode (0666 less the umask), unlike mkstemp's 0600
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(handle, "wb") as file:
                torch.save(payload, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        self.saved_epochs.append(state.epoch)

    def load(self) -> dict[str, Any]:
        """The last saved checkpoint."""
        return torch.load(self.path, weights_only=False)
