"""The one interface through which every way of combining task losses is called."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn


class Step(NamedTuple):
    """What one objective step reports (both detached, on the losses' device)."""

    value: Tensor
    """The combined training signal of the step (a scalar)."""
    weights: Tensor
    """The weight each task effectively got: d(value) / d(loss_t), shape ``(T,)``."""


class Objective(nn.Module, ABC):
    """Turns per-task losses into one update of the weights.

    The trainer calls :meth:`bind` once with the task names, adds :meth:`parameters` (learned
    weightings have some) to the optimizer, then calls :meth:`backward` once per step with the
    vector of task losses in that order. Loss-level and gradient-level methods share this
    interface, so the trainer never needs to know which kind it runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.task_names: tuple[str, ...] = ()

    def bind(self, task_names: Sequence[str]) -> None:
        """Fix the tasks (and their order) this objective combines; validates the configuration."""
        names = tuple(task_names)
        if not names:
            raise ValueError(f"{type(self).__name__}: needs at least one task")
        self.task_names = names
        self._on_bind()

    def _on_bind(self) -> None:
        """Build per-task state once the tasks are known."""

    def stack(self, losses: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The losses as a ``(T,)`` tensor in bound task order."""
        if not self.task_names:
            raise RuntimeError(f"{type(self).__name__}: call bind(task_names) first")
        if isinstance(losses, Mapping):
            missing = [t for t in self.task_names if t not in losses]
            if missing:
                raise KeyError(f"{type(self).__name__}: no loss for tasks {missing}")
            return torch.stack([losses[t] for t in self.task_names])
        if losses.shape != (len(self.task_names),):
            raise ValueError(
                f"{type(self).__name__}: losses of shape {tuple(losses.shape)}, "
                f"expected ({len(self.task_names)},) for tasks {list(self.task_names)}"
            )
        return losses

    @abstractmethod
    def value(self, losses: Tensor) -> Tensor:
        """The combined scalar for a ``(T,)`` loss vector (used on the stop set too)."""

    @abstractmethod
    def backward(self, losses: Tensor | Mapping[str, Tensor]) -> Step:
        """Accumulate ``.grad`` for one step and report the step's value and task weights."""

    def end_epoch(self) -> None:
        """Called once after each training epoch (for methods with per-epoch state)."""

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}" if self.task_names else ""


class LossObjective(Objective):
    """A method that combines the losses into one scalar and backpropagates it once."""

    def value(self, losses: Tensor) -> Tensor:
        return self.combine(self.stack(losses))

    @abstractmethod
    def combine(self, losses: Tensor) -> Tensor:
        """The differentiable combined loss of a ``(T,)`` loss vector."""

    def weights(self, losses: Tensor, value: Tensor) -> Tensor:
        """d(combine)/d(losses) at ``losses``; subclasses give closed forms to skip autograd."""
        with torch.enable_grad():
            leaf = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.combine(leaf), leaf)
        return grad

    def backward(self, losses: Tensor | Mapping[str, Tensor]) -> Step:
        losses = self.stack(losses)
        total = self.combine(losses)
        total.backward()
        value = total.detach()
        return Step(value, self.weights(losses.detach(), value))
