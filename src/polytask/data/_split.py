"""Train / stop / test splits, of one dataset or of one dataset per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import overload

import numpy as np

from .._checks import as_int
from ._multitarget import MultiTargetData
from ._taskdata import TaskData

SPLIT_NAMES = ("train", "stop", "test")


@overload
def split(
    data: MultiTargetData,
    fractions: Sequence[float] = ...,
    *,
    shuffle_seed: int | None = ...,
) -> tuple[MultiTargetData, MultiTargetData, MultiTargetData]: ...


@overload
def split(
    data: Mapping[str, TaskData],
    fractions: Sequence[float] = ...,
    *,
    shuffle_seed: int | None = ...,
) -> tuple[dict[str, TaskData], dict[str, TaskData], dict[str, TaskData]]: ...


def split(
    data: MultiTargetData | Mapping[str, TaskData],
    fractions: Sequence[float] = (0.05, 0.45, 0.5),
    *,
    shuffle_seed: int | None = None,
) -> (
    tuple[MultiTargetData, MultiTargetData, MultiTargetData]
    | tuple[dict[str, TaskData], dict[str, TaskData], dict[str, TaskData]]
):
    """Cut ``data`` into train, stop and test parts.

    The default 1:9:10 proportions take the first 5% of rows for training, the next 45% for the
    early-stopping set and the last 50% for the test set.

    Parameters
    ----------
    data
        One :class:`MultiTargetData`, or a mapping task -> :class:`TaskData` (one dataset per
        task): each task's dataset is then cut with the same fractions and the result is three
        dicts ``train, stop, test`` with the same tasks.
    fractions
        Three non-negative numbers summing to 1.
    shuffle_seed
        ``None`` (the default) cuts consecutive rows (the synthetic generators draw them
        independently already). An int assigns rows to the parts at random: a permutation drawn
        from the seed (and, for a dict, the task's name, so a task's split does not depend on
        the other tasks); each part keeps its rows in their original order.

    Raises
    ------
    ValueError
        When a part would be empty, naming the part and, for a dict, the task.

    Examples
    --------
    >>> import numpy as np
    >>> train, stop, test = split(MultiTargetData(np.arange(20.0), {"a": np.arange(20.0)}))
    >>> len(train), len(stop), len(test)
    (1, 9, 10)
    >>> per_task = {"a": TaskData(np.zeros((20, 2)), np.zeros(20)),
    ...             "b": TaskData(np.zeros((40, 2)), np.zeros(40))}
    >>> train, stop, test = split(per_task, (0.5, 0.25, 0.25), shuffle_seed=0)
    >>> {task: (len(train[task]), len(stop[task]), len(test[task])) for task in per_task}
    {'a': (10, 5, 5), 'b': (20, 10, 10)}
    """
    fractions = tuple(fractions)
    if len(fractions) != 3 or not all(f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        # `not f >= 0` also catches NaN, which compares false both ways
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    if shuffle_seed is not None:
        shuffle_seed = as_int(shuffle_seed, "shuffle_seed (or None)", 0)
    if isinstance(data, MultiTargetData):
        rows = _rows(len(data), fractions, shuffle_seed, None, "")
        train, stop, test = (data.subset(index) for index in rows)
        return train, stop, test
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("split got an empty mapping: no task to split")
        parts: tuple[dict[str, TaskData], ...] = ({}, {}, {})
        for task, task_data in data.items():
            if not isinstance(task_data, TaskData):
                raise TypeError(
                    f"task {task!r}: split takes a mapping task -> TaskData, "
                    f"got {type(task_data).__name__}"
                )
            rows = _rows(len(task_data), fractions, shuffle_seed, task, f"task {task!r}: ")
            for part, index in zip(parts, rows, strict=True):
                part[task] = task_data.subset(index)
        return parts
    raise TypeError(
        f"split takes a MultiTargetData or a mapping task -> TaskData, got {type(data).__name__}"
    )


def _rows(
    n: int,
    fractions: Sequence[float],
    shuffle_seed: int | None,
    task: str | None,
    where: str,
) -> list[slice] | list[np.ndarray]:
    """The rows of the train, stop and test parts of ``n`` rows: slices when consecutive."""
    first = round(n * fractions[0])
    second = first + round(n * fractions[1])
    bounds = {"train": (0, first), "stop": (first, second), "test": (second, n)}
    for name, (a, b) in bounds.items():
        if b <= a:
            raise ValueError(
                f"{where}the {name} split is empty: {n} rows cut in fractions {tuple(fractions)}"
            )
    if shuffle_seed is None:
        return [slice(a, b) for a, b in bounds.values()]
    key = () if task is None else tuple(task.encode())
    rng = np.random.default_rng(np.random.SeedSequence(shuffle_seed, spawn_key=key))
    order = rng.permutation(n)
    return [np.sort(order[a:b]) for a, b in bounds.values()]
