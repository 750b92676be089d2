"""Schedules that mix tasks, each with its own dataset, into training steps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .._checks import as_int

ScheduleKind = Literal["round_robin", "sequential", "proportional", "temperature"]
SizeMode = Literal["min_size", "max_size_cycle", "max_size"]
Step = list[tuple[str, np.ndarray]]
"""One training step: (task, row indices of its batch) for each task that takes part."""


class _Stream:
    """One task's batches: a fresh permutation per pass; a cycled pass is reshuffled."""

    def __init__(self, size: int, batch_size: int, rng: np.random.Generator) -> None:
        self.size, self.batch_size, self.rng = size, batch_size, rng
        self.batches_per_pass = math.ceil(size / batch_size)
        self._batches: list[np.ndarray] = []
        self.served = 0

    def next(self) -> np.ndarray:
        if not self._batches:
            order = self.rng.permutation(self.size)
            self._batches = [
                order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)
            ][::-1]
        self.served += 1
        return self._batches.pop()


@dataclass(frozen=True)
class Schedule:
    """How the tasks' batches are mixed into the steps of one epoch.

    Parameters
    ----------
    kind
        ``round_robin``: every step holds one batch of each task, their losses combined in one
        update. ``sequential``: all of task 1's batches, then task 2's, ... (kept to show
        catastrophic forgetting). ``proportional``: each step draws one task with probability
        proportional to its size. ``temperature``: probability proportional to
        ``size ** (1 / temperature)``, sizes first capped at ``size_cap``.
    size_mode
        When datasets differ in length: ``min_size`` stops at the shortest (every task gives as
        many batches as the shortest has), ``max_size_cycle`` cycles the shorter ones until the
        longest is exhausted (each new pass reshuffled), ``max_size`` lets the shorter ones just
        end. For the sampling schedules it sets the epoch's number of steps (T x shortest,
        T x longest, or every batch once) and whether an exhausted task cycles or leaves the
        draw.
    temperature
        For ``temperature`` only.
    size_cap
        For the sampling schedules (``proportional`` and ``temperature``): sizes above it count
        as ``size_cap`` in the draw probabilities. With a user's loaders or datasets (through
        :func:`mix_loaders`) sizes and the cap are counted in batches, with :class:`TaskData`
        in rows; the draws count every row, labelled or not, while a step whose batch holds no
        label is left out (an epoch of partly labelled tasks has fewer steps).

    Examples
    --------
    >>> steps = Schedule("round_robin", "min_size").epoch({"a": 4, "b": 2}, 2, seed=0)
    >>> [[task for task, _ in step] for step in steps]
    [['a', 'b']]
    """

    kind: ScheduleKind = "round_robin"
    size_mode: SizeMode = "max_size_cycle"
    temperature: float = 2.0
    size_cap: int | None = None

    def __post_init__(self) -> None:
        kinds = ("round_robin", "sequential", "proportional", "temperature")
        if self.kind not in kinds:
            raise ValueError(f"schedule must be one of {kinds}, got {self.kind!r}")
        modes = ("min_size", "max_size_cycle", "max_size")
        if self.size_mode not in modes:
            raise ValueError(f"size_mode must be one of {modes}, got {self.size_mode!r}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")
        if self.size_cap is not None:
            object.__setattr__(self, "size_cap", as_int(self.size_cap, "size_cap (or None)"))

    def probabilities(self, sizes: Mapping[str, int]) -> dict[str, float]:
        """Each task's draw probability for the sampling schedules."""
        counted = np.array(
            [min(s, self.size_cap) if self.size_cap else s for s in sizes.values()], dtype=float
        )
        power = 1.0 if self.kind == "proportional" else 1.0 / self.temperature
        logs = power * np.log(counted)  # in logs: size ** (1 / 0.01) overflows
        weights = np.exp(logs - logs.max())
        return dict(zip(sizes, weights / weights.sum(), strict=True))

    def epoch(
        self, sizes: Mapping[str, int], batch_size: int, seed: int | np.random.Generator
    ) -> list[Step]:
        """The steps of one epoch; the same ``seed`` gives the same composition."""
        batch_size = as_int(batch_size, "batch_size")
        sizes = {
            task: as_int(size, f"the size of task {task!r}", 0) for task, size in sizes.items()
        }
        if not sizes or any(s < 1 for s in sizes.values()):
            raise ValueError(f"every task needs at least one row, got sizes {dict(sizes)}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        streams = {t: _Stream(n, batch_size, rng) for t, n in sizes.items()}
        counts = {t: s.batches_per_pass for t, s in streams.items()}
        shortest, longest = min(counts.values()), max(counts.values())
        per_task = {
            "min_size": dict.fromkeys(counts, shortest),
            "max_size_cycle": dict.fromkeys(counts, longest),
            "max_size": counts,
        }[self.size_mode]
        if self.kind == "round_robin":
            steps = max(per_task.values())
            return [
                [(t, streams[t].next()) for t in sizes if i < per_task[t]] for i in range(steps)
            ]
        if self.kind == "sequential":
            return [[(t, streams[t].next())] for t in sizes for _ in range(per_task[t])]
        return self._sampled(sizes, streams, per_task, rng)

    def _sampled(
        self,
        sizes: Mapping[str, int],
        streams: dict[str, _Stream],
        per_task: dict[str, int],
        rng: np.random.Generator,
    ) -> list[Step]:
        probabilities = self.probabilities(sizes)
        left = dict(per_task)  # batches a task may still give (matters for max_size)
        cycle = self.size_mode != "max_size"
        steps: list[Step] = []
        for _ in range(sum(per_task.values())):
            pool = [t for t in sizes if cycle or left[t] > 0]
            p = np.array([probabilities[t] for t in pool])
            task = pool[rng.choice(len(pool), p=p / p.sum())]
            left[task] -= 1
            steps.append([(task, streams[task].next())])
        return steps
