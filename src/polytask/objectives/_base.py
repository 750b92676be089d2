"""The one interface through which every way of combining task losses is called."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor, nn


class Step(NamedTuple):
    """What one objective step reports (both detached, on the losses' device)."""

    value: Tensor
    """The combined training signal of the step (a scalar)."""
    weights: Tensor
    """The weight each task effectively got: d(value) / d(loss_t), shape ``(T,)``."""


Positions = tuple[int, ...] | None
"""Which bound tasks a loss vector holds, by position; ``None`` means all, in order."""


class TaskGradients(Protocol):
    """What a gradient method may ask of the task gradients of one step.

    The gradient engine builds it for the present tasks on the step's path (exact,
    representation or naive); a method never sees the model or the autograd graph. Every
    quantity is computed on first request and cached for the step.
    """

    def gramian(self) -> Tensor:
        """The ``(k, k)`` Gramian of the present tasks' gradients."""
        ...

    def jacobian(self) -> list[Tensor]:
        """The ``(k, *shape)`` Jacobian block of each shared parameter (exact path)."""
        ...

    def last_layer_norms(self) -> Tensor:
        """Each task's gradient norm on the last shared layer, shape ``(k,)``."""
        ...

    def apply(self, weights: Tensor, heads: Tensor | None = None) -> None:
        """Accumulate ``sum_t weights[t] * grad value_t`` into every parameter's ``.grad``;
        with ``heads``, each task's own parameters take ``heads[t]`` instead (Nash-MTL clips
        the shared update only)."""
        ...

    def apply_shared(self, blocks: Sequence[Tensor], weights: Tensor) -> None:
        """Accumulate ``sum_t weights[t] * blocks[i][t]`` into shared parameter ``i``."""
        ...

    def apply_heads(self, weights: Tensor | None) -> None:
        """Each task's own parameters get ``weights[t]`` times their task's gradient (or the
        plain gradient with ``None``)."""
        ...


class Objective(nn.Module, ABC):
    """Turns per-task losses into one update of the weights.

    Two kinds share this base. A :class:`LossObjective` combines the losses into one scalar
    (:meth:`LossObjective.backward`); a :class:`~polytask.objectives.GradientObjective` maps
    the task gradients, seen through :class:`TaskGradients`, to an update. Neither knows the
    model: the :class:`~polytask.GradientEngine` runs both (the trainer owns one; a user's own
    loop can too).

    :meth:`bind` fixes the task names once; the losses then come as a vector in that order.
    When only some tasks take part in a step (a schedule that mixes per-task datasets, or a
    batch without labels for a task), the vector holds just those and ``positions`` says which
    they are; absent tasks get weight 0.
    """

    needs_every_task: ClassVar[bool] = False
    """True for methods with per-task state that must see every task in every step (round
    robin schedule, no missing labels); the trainer checks the data before the first step."""

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

    @property
    def terms(self) -> tuple[nn.Module, ...]:
        """Structured terms on the outputs (see :class:`~polytask.Consistency`); none here."""
        return ()

    def bind_tasks(self, tasks: Sequence) -> None:
        """Check the structured terms against the fit's tasks (nothing to check here)."""

    def __add__(self, term: nn.Module) -> Objective:
        """``objective + term``: the objective with a structured term added."""
        from ._terms import WithTerms

        return WithTerms(self, [term])

    def stack(self, losses: Tensor | Mapping[str, Tensor], positions: Positions = None) -> Tensor:
        """The losses as a tensor in bound task order (only ``positions`` if given)."""
        if not self.task_names:
            raise RuntimeError(f"{type(self).__name__}: call bind(task_names) first")
        if isinstance(losses, Mapping):
            missing = [t for t in self.task_names if t not in losses]
            if missing:
                raise KeyError(f"{type(self).__name__}: no loss for tasks {missing}")
            return torch.stack([losses[t] for t in self.task_names])
        expected = len(self.task_names) if positions is None else len(positions)
        if losses.shape != (expected,):
            raise ValueError(
                f"{type(self).__name__}: losses of shape {tuple(losses.shape)}, "
                f"expected ({expected},) for tasks {list(self.task_names)}"
            )
        return losses

    def value(self, losses: Tensor) -> Tensor:
        """The stop-set criterion for a ``(T,)`` loss vector: by default the mean task loss, since
        a method whose combination learns or moves during training (uncertainty, DWA, gradient
        methods...) could lower its own value while no task improves. Loss-level methods of a
        fixed form (sum, mean, weighted, geometric) use their combined loss instead."""
        return self.stack(losses).mean()

    def after_step(self, recompute: Callable[[], Tensor]) -> None:
        """Called after the optimizer step; ``recompute()`` gives the step's losses again (for
        methods that learn from how the losses moved, such as FAMO)."""

    def _scatter(self, weights: Tensor, positions: Positions) -> Tensor:
        """Present tasks' weights into a ``(T,)`` vector with zeros for absent tasks."""
        if positions is None:
            return weights
        full = weights.new_zeros(len(self.task_names))
        return full.index_copy_(0, self._index(positions, weights.device), weights)

    def _index(self, positions: tuple[int, ...], device: torch.device) -> Tensor:
        cache = self.__dict__.setdefault("_index_cache", {})
        key = (positions, device)
        if key not in cache:  # one small host-to-device copy per distinct set of tasks
            cache[key] = torch.tensor(positions, dtype=torch.long, device=device)
        return cache[key]

    def end_epoch(self) -> None:
        """Called once after each training epoch (for methods with per-epoch state)."""

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}" if self.task_names else ""


class LossObjective(Objective):
    """A method that combines the losses into one scalar and backpropagates it once."""

    fixed_form: ClassVar[bool] = False
    """True when the combination has no learned or moving part: early stopping then watches
    the combined loss itself (what Keras's ``val_loss`` does)."""

    linear: ClassVar[bool] = False
    """True when ``combine`` is ``sum_t w_t * loss_t`` with weights that do not depend on the
    losses and :meth:`weights` returns exactly those ``w_t`` (Sum, Mean, Weighted): the
    backward pass then starts at the loss vector with the weights as its gradient, which is
    the gradient of the combined loss bit for bit, without the combination's autograd node. A
    subclass whose ``combine``, ``weights`` or ``_on_bind`` differ from those of the class that
    declared it (its own or a mixin's) is not linear unless it says so."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the class that sets ``linear`` vouches for the combination it resolves (a mixin's
        # combine, or a scalarizer chosen in _on_bind, would otherwise inherit the claim)
        forms = (cls.combine, cls.weights, cls._on_bind)
        if "linear" in vars(cls):
            cls._linear_forms = forms
        elif cls.linear and forms != getattr(cls, "_linear_forms", None):
            cls.linear = False

    def value(self, losses: Tensor) -> Tensor:
        if self.fixed_form:
            return self.combine(self.stack(losses))
        return super().value(losses)

    @abstractmethod
    def combine(self, losses: Tensor, positions: Positions = None) -> Tensor:
        """The differentiable combined loss of the losses of the tasks at ``positions``."""

    def weights(self, losses: Tensor, value: Tensor, positions: Positions = None) -> Tensor:
        """d(combine)/d(losses) at ``losses``; subclasses give closed forms to skip autograd."""
        with torch.enable_grad():
            leaf = losses.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.combine(leaf, positions), leaf)
        return grad

    def backward(
        self,
        losses: Tensor | Mapping[str, Tensor],
        positions: Positions = None,
        features: Tensor | None = None,
        penalty: Tensor | None = None,
    ) -> Step:
        """Backpropagate the combined loss (accumulating ``.grad``) and report the step's value
        and the ``(T,)`` task weights (0 for tasks absent from the step). ``penalty``
        (structured terms) joins the combined loss in the same backward pass; ``features`` is
        accepted for a uniform call and not read."""
        losses = self.stack(losses, positions)
        if self.linear and penalty is None:
            detached = losses.detach()  # no graph for the value: no weight is learned
            value = self.combine(detached, positions)
            weights = self.weights(detached, value, positions)
            losses.backward(weights)
            return Step(value, self._scatter(weights, positions))
        combined = self.combine(losses, positions)
        total = combined if penalty is None else combined + penalty
        drawn = None
        if type(self).weights is LossObjective.weights:
            # no closed form: read the weights off this step's own graph, since a second call
            # of combine would draw new random weights (RLW) or touch per-epoch state
            (drawn,) = torch.autograd.grad(total, losses, retain_graph=True)
        total.backward()
        if drawn is None:
            weights = self.weights(losses.detach(), combined.detach(), positions)
        else:
            weights = drawn
        return Step(total.detach(), self._scatter(weights, positions))
