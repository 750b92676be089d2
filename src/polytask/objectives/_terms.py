"""Structured terms: penalties that tie several task outputs together, added to any objective.

A :class:`Term` reads the heads' raw outputs (not the task losses) and returns one weighted
scalar. ``objective + term`` gives a :class:`WithTerms`, which the trainer runs like any other
objective; each term's value is recorded in the :class:`~polytask.History` as ``term/<name>``
(train) and ``stop_term/<name>`` (stop set). Terms need no labels: they are computed on every
row of a batch, labelled or not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..tasks import Task
from ._base import Objective
from ._loss_level import _plain, check_option
from ._mapping import check_mapping

Distance = Literal["absolute", "squared"] | Callable[[Tensor, Tensor], Tensor]


def probabilities(task: Task, raw: Tensor) -> Tensor:
    """A head's raw output as what it predicts, one row per example: probabilities for
    binary (``(n, 1)``, sigmoid), multiclass (softmax) and multilabel (sigmoid) tasks, the
    values themselves for regression."""
    raw = raw.reshape(raw.shape[0], -1)
    if task.kind == "multiclass":
        return torch.softmax(raw, dim=1)
    if task.kind in ("binary", "multilabel"):
        return torch.sigmoid(raw)
    return raw


def class_probabilities(task: Task, raw: Tensor) -> Tensor:
    """``(n, classes)`` class probabilities of a binary (2 classes) or multiclass task."""
    if task.kind == "multiclass":
        return probabilities(task, raw)
    if task.kind == "binary":
        p = probabilities(task, raw)
        return torch.cat([1 - p, p], dim=1)
    raise ValueError(f"task {task.name!r}: a {task.kind} task has no class probabilities")


def _check_weight(owner: str, weight: float) -> float:
    check_option(owner, "weight", _plain(weight))
    return float(weight)


def _known(owner: str, tasks: Mapping[str, Task], name: str) -> Task:
    if name not in tasks:
        raise KeyError(f"{owner}: unknown task {name!r}; the tasks are {list(tasks)}")
    return tasks[name]


class Term(nn.Module):
    """A weighted penalty on the task outputs. Subclasses implement :meth:`penalty`.

    Parameters
    ----------
    weight
        Multiplies the penalty (finite, non-negative).
    name
        The name the :class:`~polytask.History` records the term under.
    """

    def __init__(self, weight: float, name: str) -> None:
        super().__init__()
        self.weight = _check_weight(type(self).__name__, weight)
        self.name = name
        self.tasks: dict[str, Task] = {}

    @property
    def reads(self) -> tuple[str, ...]:
        """The tasks whose outputs the term reads."""
        raise NotImplementedError

    def bind(self, tasks: Sequence[Task]) -> None:
        """Check the term against the fit's tasks (unknown tasks, kinds, shapes)."""
        by_name = {task.name: task for task in tasks}
        self.tasks = {name: _known(type(self).__name__, by_name, name) for name in self.reads}
        self._validate()

    def _validate(self) -> None:
        """Checks that need the tasks."""

    def penalty(self, outputs: Mapping[str, Tensor]) -> Tensor:
        """The unweighted penalty (a scalar) from the heads' raw outputs."""
        raise NotImplementedError

    def forward(self, outputs: Mapping[str, Tensor]) -> Tensor:
        if not self.tasks:
            raise RuntimeError(f"{type(self).__name__}: bind(tasks) was not called")
        return self.weight * self.penalty(outputs)

    def __add__(self, other: object) -> Objective:
        # terms join a method, not each other: say how, rather than torch's bare TypeError
        raise TypeError(
            f"{type(self).__name__} + {type(other).__name__}: add terms to a method, e.g. "
            "pt.Mean() + term + other_term"
        )


def _row_distance(distance: Distance, a: Tensor, b: Tensor) -> Tensor:
    if callable(distance):
        return distance(a, b)
    gap = a - b
    per_element = gap.abs() if distance == "absolute" else gap.square()
    return per_element.sum(dim=1)


Transform = Callable[[Tensor], Tensor]


class Consistency(Term):
    """``weight * sum over pairs of mean_rows(distance(f(out_a), g(out_b)))``: outputs that
    should agree are pulled together.

    By default each output is turned into what it predicts (:func:`probabilities`: sigmoid for
    a binary task, softmax for multiclass, the value for regression); a pair may give its own
    ``f`` and ``g`` instead (e.g. a marginal of a joint head). The default distances sum the
    absolute or squared differences over an output's columns, per row.

    Parameters
    ----------
    pairs
        ``(task_a, task_b)`` or ``(task_a, task_b, f, g)`` (``f``/``g``: a function of the raw
        output, or None for the default).
    weight
        Multiplies the summed penalty.
    distance
        ``"absolute"`` (default), ``"squared"``, or ``distance(a, b)`` returning one value per
        row (or a scalar).

    Examples
    --------
    >>> import torch, polytask as pt
    >>> term = Consistency([("a", "b")], weight=2.0)
    >>> term.bind([pt.Task("a", kind="binary"), pt.Task("b", kind="binary")])
    >>> float(term({"a": torch.zeros(4, 1), "b": torch.zeros(4, 1)}))
    0.0
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str] | tuple[str, str, Transform | None, Transform | None]],
        weight: float = 1.0,
        distance: Distance = "absolute",
        name: str = "consistency",
    ) -> None:
        super().__init__(weight, name)
        self.pairs: list[tuple[str, str, Transform | None, Transform | None]] = []
        for pair in pairs:
            pair = tuple(pair)
            if len(pair) not in (2, 4) or pair[0] == pair[1]:
                raise ValueError(
                    f"Consistency: a pair names two different tasks (and optionally f, g), "
                    f"got {pair}"
                )
            a, b, f, g = pair if len(pair) == 4 else (*pair, None, None)
            for transform in (f, g):
                if transform is not None and not callable(transform):
                    raise TypeError(f"Consistency: pair ({a!r}, {b!r}): f and g must be callable")
            self.pairs.append((a, b, f, g))
        if not self.pairs:
            raise ValueError("Consistency: needs at least one pair of tasks")
        if not callable(distance) and distance not in ("absolute", "squared"):
            raise ValueError(
                f"Consistency: distance must be 'absolute', 'squared' or a callable, "
                f"got {distance!r}"
            )
        self.distance = distance

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for a, b, _, _ in self.pairs for name in (a, b)))

    def _validate(self) -> None:
        for a, b, f, g in self.pairs:  # without transforms, shapes are known before any data
            if f is None and g is None and self.tasks[a].size != self.tasks[b].size:
                raise ValueError(
                    f"Consistency: pair ({a!r}, {b!r}) compares outputs of "
                    f"{self.tasks[a].size} and {self.tasks[b].size} columns; give the pair "
                    "functions f and g that bring them to one shape"
                )

    def _view(self, name: str, raw: Tensor, transform: Transform | None) -> Tensor:
        return probabilities(self.tasks[name], raw) if transform is None else transform(raw)

    def penalty(self, outputs: Mapping[str, Tensor]) -> Tensor:
        total = None
        for a, b, f, g in self.pairs:
            va, vb = self._view(a, outputs[a], f), self._view(b, outputs[b], g)
            if va.shape != vb.shape:
                raise ValueError(
                    f"Consistency: pair ({a!r}, {b!r}) gives tensors of shapes "
                    f"{tuple(va.shape)} and {tuple(vb.shape)}; they must match"
                )
            value = _row_distance(self.distance, va, vb).mean()
            total = value if total is None else total + value
        return total


class Hierarchical(Term):
    """A coarse task's class probabilities must match the fine task's, summed through
    ``mapping`` (fine class -> coarse class): ``weight * mean_rows(penalty(P_fine M, P_coarse))``.

    Parameters
    ----------
    fine, coarse
        Task names: multiclass (or binary) tasks.
    mapping
        Fine class index -> coarse class index, as a mapping or a sequence indexed by fine
        class. Every fine class must map to exactly one known coarse class, and every coarse
        class must receive at least one fine class: checked at construction as far as the
        mapping alone tells (classes ``0..n-1`` without gaps), against the tasks' class counts
        at ``bind`` (the same check as :func:`polytask.keras.hierarchical`).
    weight
        Multiplies the penalty.
    penalty
        ``"kl"`` (default): ``KL(P_fine M || P_coarse)``; ``"absolute"``: the L1 distance of
        the two distributions.

    Examples
    --------
    >>> import torch, polytask as pt
    >>> term = Hierarchical("stars", "polarity", {0: 0, 1: 0, 2: 1, 3: 2, 4: 2})
    >>> term.bind([pt.Task("stars", kind="multiclass", size=5),
    ...            pt.Task("polarity", kind="multiclass", size=3)])
    >>> term.matrix.sum(dim=1).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        fine: str,
        coarse: str,
        mapping: Mapping[int, int] | Sequence[int],
        weight: float = 1.0,
        penalty: Literal["kl", "absolute"] = "kl",
        name: str = "hierarchical",
    ) -> None:
        super().__init__(weight, name)
        if fine == coarse:
            raise ValueError(f"Hierarchical: fine and coarse must differ, got {fine!r} twice")
        if penalty not in ("kl", "absolute"):
            raise ValueError(f"Hierarchical: penalty must be 'kl' or 'absolute', got {penalty!r}")
        self.fine, self.coarse, self.kind = fine, coarse, penalty
        # What the mapping says about itself is checked now; the class counts at bind.
        self.mapping = check_mapping("Hierarchical", fine, coarse, mapping)
        self.register_buffer("matrix", torch.zeros(0, 0), persistent=False)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.fine, self.coarse)

    @staticmethod
    def _classes(task: Task) -> int:
        if task.kind == "multiclass":
            return task.size
        if task.kind == "binary":
            return 2
        raise ValueError(
            f"Hierarchical: task {task.name!r} is {task.kind}; fine and coarse tasks must be "
            "multiclass or binary"
        )

    def _validate(self) -> None:
        n_fine = self._classes(self.tasks[self.fine])
        n_coarse = self._classes(self.tasks[self.coarse])
        check_mapping("Hierarchical", self.fine, self.coarse, self.mapping, n_fine, n_coarse)
        matrix = torch.zeros(n_fine, n_coarse)
        matrix[list(self.mapping), list(self.mapping.values())] = 1.0
        self.matrix = matrix

    def aggregated(self, fine_raw: Tensor) -> Tensor:
        """The fine task's probabilities summed into the coarse classes."""
        p = class_probabilities(self.tasks[self.fine], fine_raw)
        return p @ self.matrix.to(p.device, p.dtype)

    def penalty(self, outputs: Mapping[str, Tensor]) -> Tensor:
        p = self.aggregated(outputs[self.fine])
        q = class_probabilities(self.tasks[self.coarse], outputs[self.coarse])
        if self.kind == "absolute":
            return (p - q).abs().sum(dim=1).mean()
        tiny = torch.finfo(p.dtype).tiny
        return (p * (p.clamp_min(tiny).log() - q.clamp_min(tiny).log())).sum(dim=1).mean()


class WithTerms(Objective):
    """An objective plus structured terms: the objective's update plus the gradient of the
    summed terms. Made by ``objective + term``; the gradient engine runs it.

    A loss-level objective adds the terms to its combined loss (one backward pass); a gradient
    method gets the terms' gradient added to its own update (through the trunk once more when
    the heads read per-task leaves of the features). Early stopping watches the
    objective's own criterion: the terms are regularisers, not a task.

    Examples
    --------
    >>> import polytask as pt
    >>> objective = pt.Weighted({"a": 1.0, "b": 2.0}) + pt.Consistency([("a", "b")])
    >>> [term.name for term in objective.terms]
    ['consistency']
    """

    def __init__(self, base: Objective, terms: Sequence[Term]) -> None:
        super().__init__()
        if isinstance(base, WithTerms):
            base, terms = base.base, [*base.terms, *terms]
        for term in terms:
            if not isinstance(term, Term):
                raise TypeError(f"only a Term can be added to an objective, got {term!r}")
        names = [term.name for term in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"terms need distinct names (name=...), got {names}")
        self.base = base
        self.term_modules = nn.ModuleList(terms)

    @property
    def terms(self) -> tuple[Term, ...]:
        return tuple(self.term_modules)

    def bind(self, task_names: Sequence[str]) -> None:
        super().bind(task_names)
        self.base.bind(task_names)

    def bind_tasks(self, tasks: Sequence[Task]) -> None:
        for term in self.terms:
            term.bind(tasks)

    def value(self, losses: Tensor) -> Tensor:
        return self.base.value(losses)

    def after_step(self, recompute: Callable[[], Tensor]) -> None:
        self.base.after_step(recompute)

    def end_epoch(self) -> None:
        self.base.end_epoch()

    def extra_repr(self) -> str:
        return ""
