"""The gradient engine: per-task losses -> one update in ``.grad``, for any method and model."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._features import TaskFeatures
from .._graph import nearest_parameters, reached_from, reached_parameters
from ..models import MultiTaskModule, UserModel, has_representation, splits_per_task
from ..objectives import (
    GradientObjective,
    LossObjective,
    Mean,
    Objective,
    Step,
    Sum,
    Weighted,
    make_objective,
)
from ..objectives._registry import PATH_ALIASES
from ._gradients import FeatureGradients, GradientOverflow, LeafGradients, LossGradients, Owner
from ._reduce import Reducer

_CONSTANT_WEIGHTS = (Sum, Mean, Weighted)
"""Loss-level methods whose weights never read the losses' values."""


def _straight_through(values: Tensor, scale: Tensor) -> Tensor:
    """``values`` itself, whose gradient is ``scale`` times theirs (a loss scale that a
    method's state and weights never see)."""
    detached = values.detach()
    return detached + scale.to(values.dtype) * (values - detached)


class LearnedWeightsWarning(UserWarning):
    """A method's learned weights are not being optimised (their parameters are not in the
    optimizer)."""


def _losses_device(losses: Tensor | Mapping[str, Tensor]) -> torch.device | None:
    if isinstance(losses, Tensor):
        return losses.device
    if isinstance(losses, Mapping):
        first = next(iter(losses.values()), None)
        return first.device if isinstance(first, Tensor) else None
    return None


def _check_task_losses(losses: Mapping[str, Tensor]) -> None:
    """Each task's loss of a user's loop: a scalar tensor on the graph (checked on the host,
    no synchronisation with the device)."""
    if not losses:
        raise ValueError("losses: no task's loss given; pass {task: scalar loss tensor}")
    for name, loss in losses.items():
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"the loss of task {name!r} is {got}; give the batch's loss as a scalar tensor "
                "(reduce it, e.g. with .mean())"
            )
        if not loss.requires_grad:
            raise ValueError(
                f"the loss of task {name!r} is not on the graph (detached, or computed under "
                "no_grad): the task would get no gradient"
            )


def _unwrap(objective: Objective) -> tuple[Objective, bool]:
    """The method itself, and whether structured terms are added to it."""
    base = getattr(objective, "base", None)
    return (base, True) if isinstance(base, Objective) and objective.terms else (objective, False)


class GradientEngine:
    """Runs any method (loss level or gradient level) on any multi-task model, in any loop.

    The engine is the one place that knows autograd's tricks: it computes the task gradients
    (or their Gramian) on the method's path, hands them to the method, and accumulates the
    update into ``.grad``; the user's optimizer (or the :class:`~polytask.Trainer`) steps.

    Parameters
    ----------
    model
        A model that meets the protocol (:class:`~polytask.MultiTaskModel`, or any module
        wrapped by :func:`~polytask.as_multitask`), or any module when ``tasks`` is given (its
        shared parameters are then ``shared``, or read off the losses' graph on the first step:
        those that two or more tasks' losses reach).
    method
        An :class:`~polytask.objectives.Objective` or its name, e.g. ``"uw"``, ``"upgrad"``,
        ``"mgda@repr"``.
    path
        For a gradient method: ``"exact"``, ``"representation"`` (``"repr"``) or ``"naive"``;
        default the method's own.
    shared
        The shared parameters, when the model does not say.
    tasks
        The task names in the order of the method's weights and of a loss vector (default
        ``model.task_names``); a model that names its tasks must name these, in any order.

    Examples
    --------
    >>> import torch, polytask as pt
    >>> from torch import nn
    >>> model = pt.MultiTaskModel(pt.mlp(3, 8, 2), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})
    >>> engine = pt.GradientEngine(model, "upgrad")
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> outputs = engine.forward(x)
    >>> step = engine.backward({t: ((outputs[t] - y) ** 2).mean() for t in ("a", "b")})
    >>> optimizer.step(); optimizer.zero_grad()
    >>> tuple(step.weights.shape)
    (2,)
    """

    def __init__(
        self,
        model: nn.Module,
        method: Objective | str = "mean",
        *,
        path: str | None = None,
        shared: Iterable[nn.Parameter] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        objective = make_objective(method) if isinstance(method, str) else method
        if not isinstance(objective, Objective):
            raise TypeError(f"method must be an Objective or a method name, got {method!r}")
        self.method, self.has_terms = _unwrap(objective)
        if path is not None:
            if not isinstance(self.method, GradientObjective):
                raise ValueError(
                    f"{type(self.method).__name__} is a loss-level method: it has no gradient "
                    f"path to choose (path={path!r})"
                )
            if path not in PATH_ALIASES:
                raise ValueError(f"unknown path {path!r}; choose one of exact, repr, naive")
            self.method.path = PATH_ALIASES[path]
        names = [getattr(t, "name", t) for t in tasks] if tasks is not None else None
        model_names = list(getattr(model, "task_names", ()) or ())
        if names and model_names and sorted(names) != sorted(model_names):
            raise ValueError(f"GradientEngine: tasks={names}, the model's tasks are {model_names}")
        names = names or model_names
        if not names:
            raise ValueError(
                f"GradientEngine: {type(model).__name__} does not name its tasks; wrap it with "
                "pt.as_multitask(model, tasks=[...]) or pass tasks=[...]"
            )
        self.model, self.objective = model, objective
        self.task_names: tuple[str, ...] = tuple(names)
        if not objective.task_names:
            objective.bind(self.task_names)
        elif tuple(objective.task_names) != self.task_names:
            raise ValueError(
                f"the method is bound to tasks {list(objective.task_names)} (in that order), "
                f"the engine's are {list(self.task_names)}: pass tasks="
                f"{list(objective.task_names)} to GradientEngine, or an unbound method"
            )
        self._given_shared = None if shared is None else list(shared)
        self._shared: list[Tensor] | None = None
        self._specific: list[Tensor] = []
        self._owners: list[Owner] | None = None
        self._last: list[Tensor] | None = None
        self._pending: Tensor | Mapping[str, Tensor] | None = None
        self._steps = 0
        # FAMO and GradNorm learn after each optimizer step: a loop must call after_step
        self._learns_after_step = type(self.method).after_step is not Objective.after_step
        self._awaiting_after_step = False
        self._trainable: tuple[bool, ...] | None = None
        self._parameters: list[nn.Parameter] | None = None
        self._objective_placed = False
        self._learned: list[Tensor] = []
        self._learned_start: list[Tensor] | None = None
        self.reducer: Reducer | None = None
        self.parallel_mode = "none"
        self._ddp_reduces = False
        self._plain_features = False
        self._feeding: tuple[tuple[bool, ...], bool] | None = None

    # --- data parallelism -------------------------------------------------------------------
    def distribute(self, reducer: Reducer, mode: str) -> None:
        """Run data-parallel: each process gives :meth:`backward` the losses of its own rows,
        scaled so that the global losses are their mean over the processes (the trainer does
        this; see :mod:`polytask.engine._reduce`).

        The engine then all-reduces what the method needs: the per-task losses when the
        method's state or weights read them (one ``T``-vector), the ``T x T`` Gramian on the
        representation path, the ``T x P`` Jacobian (reduce-scattered) on the exact and naive
        paths. ``mode``
        (see :meth:`data_parallel_mode`) says who averages the model's gradients:

        - ``"ddp"``: DDP's hooks, during one ordinary backward (loss-level methods; the
          representation path when the heads read the plain features: its weighted backward
          is then one ordinary backward from the losses);
        - ``"ddp_shared"``: DDP's hooks for the shared parameters, during the weighted
          backward through the trunk; the heads' gradients travel with the Gramian, in the
          same all-reduce (the representation path with per-task leaves);
        - ``"engine"``: the engine, after the step (the exact and naive paths: only the heads
          when the shared update came from the processes' common Jacobian, which a
          Gramian-only method reads in column shards: see :mod:`polytask.engine._reduce`).
        """
        if mode not in ("ddp", "ddp_shared", "engine"):
            raise ValueError(f"mode must be 'ddp', 'ddp_shared' or 'engine', got {mode!r}")
        self.reducer = reducer
        self.parallel_mode = mode
        self._ddp_reduces = mode != "engine"
        self._plain_features = mode == "ddp" and self.path == "representation"

    def data_parallel_mode(self, *, penalty: bool = False, shared_batches: bool = True) -> str:
        """Who averages a data-parallel step's gradients (see :meth:`distribute`): DDP when
        the update ends in an ordinary backward pass (loss-level methods, the representation
        path, neither with a structured term or a model penalty that the engine backpropagates
        first), else the engine. ``shared_batches``: every task reads the same rows."""
        if isinstance(self.method, LossObjective):
            return "ddp"
        if self.path != "representation" or penalty or self.has_terms:
            return "engine"
        declares = callable(getattr(self.model, "shared_parameters", None))
        if shared_batches and declares and splits_per_task(self.model):
            return "ddp_shared"
        return "ddp"

    def follow_objective(self) -> None:
        """Run the method the objective holds now: after its state was replaced wholesale
        (a checkpoint restored into it), the method of a structured-terms container is a new
        object."""
        path = getattr(self.method, "path", None)
        self.method, self.has_terms = _unwrap(self.objective)
        if path is not None and isinstance(self.method, GradientObjective):
            self.method.path = path

    @property
    def reads_losses(self) -> bool:
        """Whether the method's weights or state read the losses' values (then a data-parallel
        step all-reduces them: every process must see the global losses)."""
        method = self.method
        if isinstance(method, LossObjective):
            return not isinstance(method, _CONSTANT_WEIGHTS)
        kind = type(method)
        return not (
            (kind.step is GradientObjective.step or getattr(kind, "gramian_only_step", False))
            and kind.values is GradientObjective.values
            and kind.after_step is Objective.after_step
        )

    # --- what the caller gives the optimizer ------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        """The method's learned parameters (uncertainty weights, GradNorm's weights...): give
        them to the optimizer with the model's."""
        return iter([p for p in self.objective.parameters() if p.requires_grad])

    @property
    def is_gradient_method(self) -> bool:
        """Whether the method works on task gradients (a Gramian or Jacobian view) rather than
        on the losses alone."""
        return isinstance(self.method, GradientObjective)

    @property
    def path(self) -> str | None:
        """The gradient path, or None for a loss-level method."""
        return self.method.path if self.is_gradient_method else None

    # --- checks before the first step ------------------------------------------------------
    def check(
        self, *, per_task_batches: bool = False, complete: bool = True, one_task_steps: bool = False
    ) -> None:
        """Refuse, before any step, a combination that cannot work: a path the model cannot
        give, a method with per-task state on steps that lack some tasks (``complete``
        false: a schedule other than round robin, or missing labels), or a gradient method on
        steps that each hold one task (``one_task_steps``: nothing to combine)."""
        name = type(self.method).__name__
        if self.method.needs_every_task and not complete:
            raise ValueError(
                f"{name} keeps per-task state and needs every task in every step: use the "
                "round_robin schedule and data without missing labels"
            )
        if self.is_gradient_method and one_task_steps:
            raise ValueError(
                f"{name} combines the gradients of the tasks in a step, and this schedule gives "
                "every step one task (it would train as plain gradient descent on each): use "
                "the round_robin schedule, or a loss-level method"
            )
        if self.path == "representation" and not has_representation(self.model):
            declared = isinstance(self.model, MultiTaskModule) and not isinstance(
                self.model, UserModel
            )
            hint = (
                "use the exact path"
                if declared
                else "wrap it with pt.as_multitask(..., shared='<submodule>') (the submodule "
                "every task reads), or use the exact path"
            )
            raise ValueError(
                f"{name}@repr needs the shared representation, and {type(self.model).__name__} "
                f"exposes none: {hint}"
            )

    # --- one step ---------------------------------------------------------------------------
    def split(self, z: Tensor) -> Tensor | TaskFeatures:
        """What the heads should read in a training step: one leaf of ``z`` per task when the
        method's path and the model allow it (one backward through the heads then separates
        every task's gradient), else ``z`` itself."""
        if (
            self.is_gradient_method
            and self.method.path != "naive"
            and not self._plain_features
            and splits_per_task(self.model)
            and self._shared_feed(z)
        ):
            return TaskFeatures(z, self.task_names)
        return z

    def _shared_feed(self, z: Tensor) -> bool:
        """Whether every shared parameter feeds the features ``z``. A shared layer past them (one
        that two tasks' heads read) gets its gradient only through the heads' graph, which
        per-task leaves of ``z`` would hold apart from the trunk's: the step then reads ``z``
        itself (the exact path takes the Jacobian from the losses, the representation path
        the features' gradients by a batched product). Read once per set of trainable
        parameters."""
        if self._parameters is None:
            self._parameters = list(self.model.parameters())
        trainable = tuple(p.requires_grad for p in self._parameters)
        if self._feeding is None or self._feeding[0] != trainable:
            declared = self._given_shared
            if declared is None:
                declared = self.model.shared_parameters()
            reached = reached_parameters(z)
            past = [p for p in declared if p.requires_grad and id(p) not in reached]
            self._feeding = (trainable, not past)
        return self._feeding[1]

    def forward(self, x: Any, task: str | None = None) -> dict[str, Tensor] | Tensor:
        """The model's outputs for ``x`` (all tasks, or ``task``'s), computed so that the next
        :meth:`backward` has what the method's path needs (the shared features)."""
        wants_features = self.is_gradient_method and self.method.path != "naive"
        tracked = wants_features and torch.is_grad_enabled()  # not a no_grad (logging) pass
        if not (tracked and has_representation(self.model)):
            return self.model(x) if task is None else self.model(x, task=task)
        pending = self._pending
        if pending is not None and (
            task is None or not isinstance(pending, dict) or task in pending
        ):
            # the backward reads one forward's features: the earlier outputs' trunk gradient
            # would be dropped without a word
            raise RuntimeError(
                f"engine.forward was called again before backward: {type(self.method).__name__}"
                f"@{self.method.path} reads the features of one forward per step (per task), "
                "and the earlier outputs would get no gradient through the trunk; compute a "
                "step's outputs in one forward (two views: concatenate them), call the model "
                "itself for outputs you do not train on, or use the naive path"
            )
        z = self.model.features(x)
        if task is not None:  # a per-task batch: its own rows' features
            pending = pending if isinstance(pending, dict) else {}
            pending[task] = z
            self._pending = pending
            return self.model.heads_forward(z, task)
        h = self.split(z)
        self._pending = h
        return self.model.heads_forward(h)

    def backward(
        self,
        losses: Tensor | Mapping[str, Tensor],
        features: Tensor | Mapping[str, Tensor] | None = None,
        *,
        positions: tuple[int, ...] | None = None,
        terms: Tensor | None = None,
        scale: Tensor | float | torch.amp.GradScaler | None = None,
    ) -> Step:
        """Accumulate the method's update into ``.grad`` and return the step's value and task
        weights.

        Parameters
        ----------
        losses
            ``{task: loss}`` (the tasks of the step; absent tasks get weight 0), or the ``(k,)``
            vector in task order with ``positions``.
        features
            For the representation path: the features every head read (or a mapping task ->
            the features of its own batch); by default what :meth:`forward` kept.
        terms
            The structured terms' values of the step, ``torch.stack([term(outputs) for term in
            terms])`` (each term bound to the tasks); required when the method has terms.
        scale
            A gradient scaler's loss scale (float16 training), or the ``torch.amp.GradScaler``
            itself (its current scale): ``.grad`` gets the update times ``scale``, for the
            scaler to unscale, while the method sees unscaled gradients,
            Gramians and norms in float32 (a scale ``s`` would multiply a Gramian by ``s^2``
            and change every method that is not homogeneous of degree 1 in the gradients).

        Notes
        -----
        It runs outside autocast (a loop under ``torch.autocast``, as Lightning's mixed
        precision runs ``training_step``, gets Gramians and weights in float32 as the trainer
        does). The method's learned weights (uncertainty, GradNorm...) move to the losses'
        device at the first call. A method that learns after each optimizer step (FAMO,
        GradNorm) needs :meth:`after_step` between two calls; one with per-epoch state (DWA)
        needs :meth:`end_epoch` after each epoch.
        """
        device = _losses_device(losses)
        if device is not None and torch.is_autocast_enabled(device.type):
            with torch.autocast(device.type, enabled=False):
                return self._backward(losses, features, positions, terms, scale)
        return self._backward(losses, features, positions, terms, scale)

    def _backward(
        self,
        losses: Tensor | Mapping[str, Tensor],
        features: Tensor | Mapping[str, Tensor] | None,
        positions: tuple[int, ...] | None,
        terms: Tensor | None,
        scale: Tensor | float | torch.amp.GradScaler | None,
    ) -> Step:
        if self._awaiting_after_step:
            raise RuntimeError(
                f"{type(self.method).__name__} learns from each optimizer step: call "
                "engine.after_step(recompute) after optimizer.step(), recompute() giving the "
                "batch's task losses again (under no_grad, a vector in task order), before the "
                "next backward"
            )
        if isinstance(losses, Mapping):
            unknown = [t for t in losses if t not in self.task_names]
            if unknown:
                raise KeyError(
                    f"losses for unknown tasks {unknown}; the tasks are {list(self.task_names)}"
                )
            _check_task_losses(losses)
            if self.has_terms and terms is None:  # a user's loop: the terms would be dropped
                raise ValueError(
                    f"the method has structured terms {[t.name for t in self.objective.terms]}: "
                    "pass terms=torch.stack([term(outputs) for term in engine.objective.terms]) "
                    "(each bound once with term.bind(tasks)), or train with pt.Trainer"
                )
            present = [i for i, t in enumerate(self.task_names) if t in losses]
            vector = torch.stack([losses[self.task_names[i]] for i in present])
            positions = None if len(present) == len(self.task_names) else tuple(present)
        elif isinstance(losses, Tensor) and losses.ndim == 1:
            vector = losses
        else:
            got = f"shape {tuple(losses.shape)}" if isinstance(losses, Tensor) else type(losses)
            raise TypeError(
                f"losses must be a mapping task -> scalar loss or a vector of the tasks' losses "
                f"in task order, got {got}"
            )
        if features is None:
            features = self._pending
        self._pending = None
        self._awaiting_after_step = self._learns_after_step
        if not self._objective_placed:  # learned weights live where the losses are
            self.objective.to(vector.device)
            self._objective_placed = True
        if scale is None:  # a float16 fit's first steps overflow and are skipped: no warning
            self._watch_learned()
        penalty = None if terms is None else terms.sum()
        if isinstance(scale, torch.amp.GradScaler):  # its scale tensor, made on first use
            made = scale._scale  # (read, not recomputed: a product and a tensor per step)
            scale = made if made is not None else scale.scale(torch.ones((), device=vector.device))
        elif scale is not None and not isinstance(scale, Tensor):
            scale = torch.tensor(float(scale), device=vector.device)
        if self.reducer is not None and self.reads_losses:
            if self.is_gradient_method:  # read the graph before the all-reduce joins it
                self._resolve(self.method.stack(vector, positions))
            vector = self.reducer.straight_through(vector)
        if isinstance(self.method, LossObjective):
            if scale is not None:
                vector = _straight_through(vector, scale)
                penalty = None if penalty is None else _straight_through(penalty, scale)
            step = self.method.backward(vector, positions, penalty=penalty)
            if scale is not None:
                self._scale_own_grads(scale)
            if self.reducer is not None and not self._ddp_reduces:
                self.reducer.average_grads(self.model.parameters())
            return step
        if not isinstance(self.method, GradientObjective):
            raise TypeError(
                f"{type(self.method).__name__} is neither a loss-level nor a gradient method"
            )
        vector = self.method.stack(vector, positions)
        if penalty is not None:  # the terms' gradient first; the method's update adds to it
            (penalty if scale is None else penalty * scale).backward(retain_graph=True)
            if isinstance(features, TaskFeatures):
                # the heads read per-task leaves: the terms' gradient stopped there; send it on
                seeds = [leaf.grad for leaf in features.values() if leaf.grad is not None]
                if seeds:
                    torch.autograd.backward(features.z, sum(seeds), retain_graph=True)
        view = self._view(vector, positions, features, scale)
        try:
            step = self.method.step(vector, positions, view)
        except GradientOverflow:
            return self._skip(vector, positions, view)
        if scale is not None:
            self._scale_own_grads(scale)
            self._last_weights = step.weights
        if self.reducer is not None and not self._ddp_reduces:
            # the shared update from the processes' common Jacobian is already global
            local = self._specific if view.global_shared and penalty is None else None
            self.reducer.average_grads(self.model.parameters() if local is None else local)
        elif self.parallel_mode == "ddp_shared" and not view.heads_reduced:
            self.reducer.average_grads(self._specific)
        if penalty is not None:
            step = Step(step.value + penalty.detach(), step.weights)
        return step

    def _skip(self, vector: Tensor, positions: tuple[int, ...] | None, view) -> Step:
        """A float16 step whose gradients overflowed: the method saw nothing; an infinite
        gradient makes the scaler skip the optimizer step (and lower the scale). The step
        reports the last finite weights (uniform at first)."""
        if self._ddp_reduces:  # DDP waits for one backward pass: give it a zero one
            view._send(torch.zeros(len(vector), dtype=vector.dtype, device=vector.device), None)
        for param in self.model.parameters():
            if param.requires_grad:
                param.grad = torch.full_like(param, float("inf"))
                break
        weights = getattr(self, "_last_weights", None)
        if weights is None:
            weights = self.method._scatter(
                torch.full_like(vector.detach(), 1 / len(vector)), positions
            )
        present = weights if positions is None else weights[list(positions)]
        return Step((present * vector.detach()).sum(), weights)

    def _scale_own_grads(self, scale: Tensor) -> None:
        """The method's own parameters (uncertainty, GradNorm's weights) got their gradient
        from unscaled quantities: scale it like the model's, for the scaler to unscale."""
        for param in self.objective.parameters():
            if param.grad is not None:
                param.grad.mul_(scale.to(param.grad.dtype))

    def state_dict(self) -> dict[str, Any]:
        """What the engine itself carries from step to step (a checkpoint saves it): the last
        finite weights of a float16 fit, which a skipped step reports."""
        return {"last_weights": getattr(self, "_last_weights", None)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        weights = state.get("last_weights")
        if weights is not None:
            self._last_weights = weights

    def skipped_step(self) -> None:
        """The optimizer step did not happen (the gradient scaler skipped an overflowed
        step): a method that learns after each step learns nothing from it (FAMO's weights
        would move on a loss change of zero)."""
        self._awaiting_after_step = False

    def after_step(self, recompute: Callable[[], Tensor]) -> None:
        """Pass the optimizer step on to a method that learns from it (FAMO); under data
        parallelism it sees the global losses."""
        self._awaiting_after_step = False
        reducer = self.reducer
        if reducer is not None and self.reads_losses:
            self.objective.after_step(lambda: reducer.mean([recompute()])[0])
        else:
            self.objective.after_step(recompute)

    def end_epoch(self) -> None:
        """Tell the method an epoch ended (DWA weighs the tasks from the last epochs' losses:
        without this call it stays at equal weights); call it once per epoch in your own loop,
        as the trainer does."""
        self.objective.end_epoch()

    # --- internals --------------------------------------------------------------------------
    def _view(
        self,
        values: Tensor,
        positions: tuple[int, ...] | None,
        features: Tensor | Mapping[str, Tensor] | None,
        scale: Tensor | None = None,
    ):
        view = self._make_view(values, positions, features, scale)
        if scale is not None:
            view.scale = scale
        if self.reducer is not None:
            view.reducer = self.reducer
            view.fuse_heads = self.parallel_mode == "ddp_shared"
            view.shard_jacobian = self.parallel_mode == "engine"
        return view

    def _make_view(
        self,
        values: Tensor,
        positions: tuple[int, ...] | None,
        features: Tensor | Mapping[str, Tensor] | None,
        scale: Tensor | None,
    ):
        method = self.method
        names = [self.task_names[i] for i in (positions or range(len(self.task_names)))]
        self._resolve(values)
        transformed = method.values(values)
        if scale is not None:
            transformed = transformed * scale.to(transformed.dtype)
        common = (
            transformed,
            self._shared,
            self._specific,
            lambda w: method._scatter(w, positions),
            lambda: self._last_layer(
                features if isinstance(features, TaskFeatures) else None, transformed
            ),
        )
        if method.path == "naive":
            return LossGradients(*common, naive=True)
        if isinstance(features, TaskFeatures):
            return LeafGradients(
                *common,
                features=features,
                names=names,
                owners=self._owners,
                representation=method.path == "representation",
            )
        if method.path == "representation":
            if features is None:
                raise ValueError(
                    f"{type(method).__name__}@repr needs the shared features of this step: "
                    "call engine.forward(x) for the outputs before each backward (one backward "
                    "reads one forward's features), or pass features= (the tensor every head "
                    "read, or a mapping task -> its own batch's features)"
                )
            return FeatureGradients(*common, features=features, names=names)
        return LossGradients(*common)

    def _resolve(self, values: Tensor) -> None:
        """The shared and task-specific parameters and the heads' owners: once, and again
        when parameters were frozen or unfrozen since (fine-tuning)."""
        model = self.model
        if self._parameters is None:  # the list once: walking the modules each step costs
            self._parameters = list(model.parameters())
        trainable = tuple(p.requires_grad for p in self._parameters)
        if self._shared is not None and trainable == self._trainable:
            return
        self._trainable = trainable
        if self._given_shared is not None:
            shared = self._given_shared
        elif callable(getattr(model, "shared_parameters", None)):
            shared = list(model.shared_parameters())
        else:
            shared = self._infer_shared(values)
        self._shared = [p for p in shared if p.requires_grad]
        if not self._shared:
            raise ValueError(
                f"{type(self.method).__name__}: {type(model).__name__} has no shared parameter "
                "that requires a gradient"
            )
        ids = {id(p) for p in self._shared}
        self._specific = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        self._owners = self._owner_positions(values)

    def _per_task_roots(self, values: Tensor) -> list[Tensor] | None:
        node = values.grad_fn
        if node is None or type(node).__name__ != "StackBackward0":
            return None
        return [edge[0] for edge in node.next_functions]

    def _infer_shared(self, values: Tensor) -> list[Tensor]:
        reach = self._reach(values)
        if reach is None:
            raise ValueError(
                f"{type(self.model).__name__}: polytask cannot tell which parameters are shared; "
                "wrap it with pt.as_multitask(..., shared='<submodule>') or pass shared="
            )
        counts: dict[int, int] = {}
        for ids in reach:
            for pid in ids:
                counts[pid] = counts.get(pid, 0) + 1
        return [p for p in self.model.parameters() if counts.get(id(p), 0) > 1]

    def _reach(self, values: Tensor) -> list[set[int]] | None:
        roots = self._per_task_roots(values)
        if roots is None:
            return None
        return [reached_from(node) if node is not None else set() for node in roots]

    def _owner_positions(self, values: Tensor) -> list[Owner] | None:
        position = {name: i for i, name in enumerate(self.task_names)}
        declared = getattr(self.model, "parameter_owners", None)
        owners = declared() if callable(declared) else None
        if owners is None:
            reach = self._reach(values)
            if reach is None:
                return None
            owners = {}
            for name, ids in zip(self.task_names, reach, strict=False):
                for pid in ids:
                    owners[pid] = None if pid in owners else name
        found: list[Owner] = []
        for param in self._specific:
            owner = owners.get(id(param))
            if owner is None or (isinstance(owner, str) and owner not in position):
                return None
            if isinstance(owner, str):
                found.append(position[owner])
            else:  # one task per output row, indexed on the parameter's device once
                rows = [position[name] for name in owner]
                found.append(torch.tensor(rows, dtype=torch.long, device=param.device))
        return found

    def _last_layer(self, features: TaskFeatures | None, values: Tensor) -> list[Tensor]:
        """The shared parameters of the modules that own the shared parameters nearest the
        outputs: the last shared layer (one per column for cross-stitch, whose columns'
        last layers are all that near)."""
        if self._last is None:
            root = features.z if features is not None else values
            ids = {id(p) for p in self._shared}
            nearest = nearest_parameters([root], ids)
            if not nearest:
                raise ValueError(f"{type(self.method).__name__}: no shared layer feeds the losses")
            last: list[Tensor] = []
            for module in self.model.modules():
                own = [p for p in module.parameters(recurse=False) if id(p) in ids]
                if any(id(p) in nearest for p in own):
                    last.extend(p for p in own if all(p is not q for q in last))
            self._last = last
        return self._last

    def _watch_learned(self) -> None:
        """Warn once when a learned weighting's parameters do not move (not in the optimizer)."""
        self._steps += 1
        if self._steps > 3:
            return
        if self._steps == 1:
            self._learned = list(self.parameters())
            self._learned_start = [p.detach().clone() for p in self._learned]
        if not self._learned:
            return
        elif self._steps == 3 and all(
            torch.equal(p.detach(), start)
            for p, start in zip(self._learned, self._learned_start, strict=True)
        ):
            warnings.warn(
                f"{type(self.method).__name__}'s learned weights have not changed in two steps: "
                "add engine.parameters() to your optimizer",
                LearnedWeightsWarning,
                stacklevel=3,
            )


__all__ = ["GradientEngine", "LearnedWeightsWarning"]
