"""The user's own per-task ``DataLoader``s (or ``Dataset``s) mixed by a :class:`Schedule`.

The schedule works at batch granularity here: a task has ``len(loader)`` batches per pass, and
:meth:`Schedule.epoch` is asked for the steps of ``len(loader)`` one-row "batches" per task,
so every schedule and size mode means what it means on :class:`TaskData`, counted in batches
instead of rows (a sampling schedule draws a task in proportion to its batches, and
``size_cap`` caps batches: a last partial batch counts as a whole one). Which batch a step
holds is the loader's business (its sampler, its shuffle); polytask only decides which tasks
take part in each step and restarts a loader that the schedule cycles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .._checks import as_int
from ._schedules import Schedule
from ._taskdata import TaskData

LoaderLike = DataLoader | Dataset
"""A task's data in the user's own pipeline: a ``DataLoader``, or a map-style ``Dataset``
(anything with ``__len__`` and ``__getitem__``) that polytask batches itself."""


def as_loaders(
    loaders: Mapping[str, Any], batch_size: int | None, *, shuffle: bool = True
) -> dict[str, DataLoader]:
    """Each task's ``DataLoader``: given ones are kept as they are, map-style datasets wrapped.

    Parameters
    ----------
    loaders
        Task -> ``DataLoader`` or map-style ``Dataset``.
    batch_size
        Batch size of the wrapped datasets; needed only when some task gives a ``Dataset``.
    shuffle
        Whether a wrapped dataset is shuffled (each pass anew). A given ``DataLoader`` keeps
        its own sampler.

    Raises
    ------
    TypeError, ValueError
        Naming the task whose entry is neither, whose loader has no length or no batch.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> loaders = as_loaders({"a": TensorDataset(torch.zeros(5, 2), torch.zeros(5))}, 2)
    >>> len(loaders["a"])
    3
    """
    if not isinstance(loaders, Mapping):
        raise TypeError(
            f"expected a mapping task -> DataLoader or Dataset, got {type(loaders).__name__}"
        )
    if not loaders:
        raise ValueError("no task: the mapping task -> DataLoader or Dataset is empty")
    if batch_size is not None:
        batch_size = as_int(batch_size, "batch_size")
    result = {}
    for task, item in loaders.items():
        if isinstance(item, DataLoader):
            loader = item
        elif isinstance(item, IterableDataset):
            raise TypeError(
                f"task {task!r}: an IterableDataset cannot be shuffled or counted by polytask; "
                "wrap it in a DataLoader whose dataset defines __len__"
            )
        elif isinstance(item, TaskData):
            raise TypeError(
                f"task {task!r}: a TaskData is not a torch Dataset; pass a mapping "
                "task -> TaskData on its own (no loaders), or a Dataset / DataLoader per task"
            )
        elif hasattr(item, "__getitem__") and hasattr(item, "__len__"):
            if batch_size is None:
                raise ValueError(
                    f"task {task!r}: a Dataset needs batch_size to be batched "
                    "(or pass a DataLoader of your own)"
                )
            loader = DataLoader(item, batch_size=batch_size, shuffle=shuffle)
        else:
            raise TypeError(
                f"task {task!r}: expected a torch DataLoader or a map-style Dataset, "
                f"got {type(item).__name__}"
            )
        batches_per_pass(task, loader)
        result[task] = loader
    return result


def batches_per_pass(task: str, loader: DataLoader) -> int:
    """``len(loader)``, the number of batches the schedule counts for ``task`` in one pass."""
    try:
        length = len(loader)
    except TypeError:
        raise TypeError(
            f"task {task!r}: its DataLoader has no length (an IterableDataset without "
            "__len__); the schedule needs each task's number of batches per pass"
        ) from None
    if length < 1:
        raise ValueError(
            f"task {task!r}: its DataLoader gives no batch (len(loader) is {length}; "
            f"{len(loader.dataset)} rows, drop_last={loader.drop_last})"
        )
    return length


def _torch_seed(entropy: Sequence[int]) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0] >> 1)


class LoaderPass:
    """One pass over a loader, its draws from torch's global generator isolated and seeded.

    A loader without a generator of its own draws its shuffle (and a dataset in the main
    process its random augmentations) from torch's global generator. Each pass runs on a
    generator state of its own, seeded from ``seed``: the pass is reproducible and the
    caller's random stream (dropout, the trainer's) is left untouched. A loader built with its
    own ``generator=`` keeps following that generator.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> loader = DataLoader(torch.arange(6), batch_size=3, shuffle=True)
    >>> [b.tolist() for b in LoaderPass(loader, 7)] == [b.tolist() for b in LoaderPass(loader, 7)]
    True
    """

    def __init__(self, loader: DataLoader, seed: int) -> None:
        self._state = torch.Generator().manual_seed(seed).get_state()
        self._iterator = self._isolated(iter, loader)

    def _isolated(self, function, argument):
        outer = torch.get_rng_state()
        torch.set_rng_state(self._state)
        try:
            return function(argument)
        finally:
            self._state = torch.get_rng_state()
            torch.set_rng_state(outer)

    def __iter__(self) -> LoaderPass:
        return self

    def __next__(self) -> Any:
        return self._isolated(next, self._iterator)


class _LoaderStream:
    """One task's batches within an epoch: a new pass (restarted iterator, reshuffled by the
    loader's own sampler) each time the schedule asks for more than a pass holds."""

    def __init__(self, task: str, loader: DataLoader, entropy: Sequence[int]) -> None:
        self.task, self.loader, self.entropy = task, loader, tuple(entropy)
        self.length = batches_per_pass(task, loader)
        self.passes = 0
        self._pass: LoaderPass | None = None
        self._served = 0

    def next(self) -> Any:
        if self._pass is None or self._served == self.length:
            self._pass = LoaderPass(self.loader, _torch_seed((*self.entropy, self.passes)))
            self.passes += 1
            self._served = 0
        try:
            batch = next(self._pass)
        except StopIteration:
            raise ValueError(
                f"task {self.task!r}: its DataLoader ended after {self._served} batches, "
                f"but len(loader) is {self.length}; the schedule counts on len(loader) "
                "batches per pass"
            ) from None
        self._served += 1
        return batch


def _schedule(schedule: Schedule | str) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str):
        return Schedule(schedule)  # type: ignore[arg-type]
    raise TypeError(f"schedule must be a Schedule or its kind, got {type(schedule).__name__}")


def mixed_steps(
    loaders: Mapping[str, DataLoader], schedule: Schedule | str, entropy: Sequence[int]
) -> Iterator[list[tuple[str, Any]]]:
    """The steps of one epoch as ``[(task, batch), ...]``, tasks in the schedule's order.

    ``entropy`` (non-negative ints) seeds the composition and each task's passes.
    """
    schedule = _schedule(schedule)
    streams = {
        task: _LoaderStream(task, loader, (*entropy, i))
        for i, (task, loader) in enumerate(loaders.items())
    }
    lengths = {task: stream.length for task, stream in streams.items()}
    rng = np.random.default_rng(np.random.SeedSequence(list(entropy)))
    for step in schedule.epoch(lengths, 1, rng):
        yield [(task, streams[task].next()) for task, _ in step]


def mix_loaders(
    loaders: Mapping[str, LoaderLike],
    schedule: Schedule | str = "round_robin",
    *,
    seed: int = 0,
    epoch: int = 0,
    batch_size: int | None = None,
) -> Iterator[dict[str, Any]]:
    """One epoch of per-task loaders mixed by a polytask schedule, for your own training loop.

    Parameters
    ----------
    loaders
        Task -> ``torch.utils.data.DataLoader``, or a map-style ``Dataset`` that is wrapped in a
        shuffling ``DataLoader`` of ``batch_size``.
    schedule
        A :class:`Schedule` or its kind (``"round_robin"``, ``"sequential"``,
        ``"proportional"``, ``"temperature"``; size mode ``max_size_cycle``). It counts in
        batches: a task has ``len(loader)`` batches per pass. ``round_robin`` gives one batch
        of each task per step; ``min_size`` stops at the task with the fewest batches,
        ``max_size_cycle`` restarts the shorter loaders (a shuffling loader reshuffles) until
        the longest has given all its batches, ``max_size`` lets them end. The sampling
        schedules weigh a task by its number of batches (``size_cap`` caps that number).
    seed, epoch
        Non-negative ints. The composition of the steps and each loader's order (when the
        loader draws it from torch's global generator, as ``shuffle=True`` without a
        ``generator`` does) follow from them, so a seed and an epoch give the same steps.
        Torch's global random state is left as it was.
    batch_size
        The batch size of wrapped datasets.

    Yields
    ------
    dict
        Per step, task -> that task's batch as its loader gives it (e.g. ``(x, y)``), in the
        schedule's order. Each epoch starts every loader afresh: with ``min_size`` a loader
        that does not shuffle gives the same first batches every epoch.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> a = TensorDataset(torch.zeros(4, 3), torch.zeros(4))  # 2 batches of 2
    >>> b = DataLoader(TensorDataset(torch.ones(2, 3), torch.ones(2)), batch_size=2)  # 1 batch
    >>> for step in mix_loaders({"a": a, "b": b}, "round_robin", seed=0, epoch=0, batch_size=2):
    ...     print({task: tuple(x.shape) for task, (x, y) in step.items()})
    {'a': (2, 3), 'b': (2, 3)}
    {'a': (2, 3), 'b': (2, 3)}
    """
    for name, value in (("seed", seed), ("epoch", epoch)):
        if not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    schedule = _schedule(schedule)
    wrapped = as_loaders(loaders, batch_size)  # checked now, before the first step is asked for
    return (dict(step) for step in mixed_steps(wrapped, schedule, (int(seed), int(epoch))))
