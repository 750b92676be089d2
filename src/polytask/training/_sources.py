"""Training data on the device, validated once, served as batches.

Two sources: one dataset whose rows carry every task's target (:class:`SharedSource`), or one
dataset per task mixed by a schedule (:class:`PerTaskSource`). Both yield batches that the loss
plan turns into task losses; host-side label masks say which tasks a batch can train without
a device-to-host sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_finite
from ..data import MultiTargetData, Schedule, TaskData, csr_batch
from ..tasks import Task

SHUFFLE_COPY_BYTES = 1 << 28
"""Data up to this size (inputs and targets, 256 MiB) are shuffled by one copy per epoch;
larger data by an index select per step (no second copy of the data in memory)."""


@dataclass
class SharedBatch:
    """Rows that carry every task's target."""

    x: Tensor
    y: dict[str, Tensor] | Tensor
    masks: dict[str, Tensor] | None
    positions: tuple[int, ...] | None  # tasks with at least one label; None = all
    counts: list[int]  # labelled rows per present task (of the whole step when sharded)
    share: float = 1.0  # this process's fraction of the step's rows (data-parallel fits)
    local_counts: tuple[int, ...] | None = None
    """Sharded data with missing labels: per present task, this process's labelled rows (0: the
    task's loss here is a zero that weighs nothing; other processes hold its labels). The
    losses are then weighed by ``local_counts / counts``, not by ``share``."""


@dataclass
class TaskBatch:
    """One batch of one task's own data."""

    position: int
    x: Tensor
    y: Tensor
    mask: Tensor | None
    count: int  # labelled rows (of the whole step when sharded)
    share: float = 1.0  # this process's fraction of the step's rows of the task
    local_count: int | None = None
    """Sharded data with missing labels: this process's labelled rows (then ``share`` is its
    fraction of the step's labelled rows; 0: the loss here is a zero that weighs nothing)."""
    row_share: float = 1.0  # this process's fraction of the step's rows of the task, always


def _rows(y: dict[str, Tensor] | Tensor, index: Tensor | slice) -> dict[str, Tensor] | Tensor:
    """The rows ``index`` of the targets: one matrix, or one tensor per task."""
    return y[index] if isinstance(y, Tensor) else {name: v[index] for name, v in y.items()}


def _slice(n: int, shard: Any) -> tuple[int, int, float]:
    """This process's rows ``[lo, hi)`` of a step's ``n`` and its share of them. A process
    left without a row (a step of fewer rows than processes) takes the first row at share 0,
    so its losses stay finite and weigh nothing."""
    lo, hi = shard.bounds(n)
    return (lo, hi, (hi - lo) / n) if hi > lo else (0, 1, 0.0)


def shard_part(part: TaskBatch, shard: Any) -> TaskBatch:
    """This process's slice of one task's batch (rows of a dense or sparse CSR ``x``)."""
    n = part.x.shape[0]
    lo, hi, share = _slice(n, shard)
    x = part.x.narrow(0, lo, hi - lo) if part.x.layout == torch.sparse_csr else part.x[lo:hi]
    mask = None if part.mask is None else part.mask[lo:hi]
    return TaskBatch(part.position, x, part.y[lo:hi], mask, part.count, share, row_share=share)


@dataclass
class PerTaskBatch:
    parts: list[TaskBatch]

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(p.position for p in self.parts)

    @property
    def counts(self) -> list[int]:
        return [p.count for p in self.parts]


Batch = SharedBatch | PerTaskBatch
Source = Any
"""A :class:`SharedSource`, :class:`PerTaskSource` or ``LoaderSource``."""


def _partial(
    tasks: Sequence[Task], targets: Callable[[str], tuple[Tensor, Tensor | None]]
) -> list[str]:
    """The multilabel ``tasks`` with a NaN target inside a labelled row (``targets``: a task's
    targets and its labelled-row mask, or None)."""
    partial = []
    for task in tasks:
        if task.kind == "multilabel":
            y, mask = targets(task.name)
            if bool(torch.isnan(y if mask is None else y[mask]).any()):
                partial.append(task.name)
    return partial


def _on(target: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A prepared target on the device; real-valued targets in the model's dtype (class
    indices stay integers)."""
    return target.to(device, dtype=dtype) if target.is_floating_point() else target.to(device)


class SharedSource:
    """A :class:`MultiTargetData` split on the device, targets validated and converted."""

    def __init__(
        self,
        data: MultiTargetData,
        split: str,
        tasks: Sequence[Task],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(data) == 0:
            raise ValueError(f"the {split} split is empty")
        check_finite(data.x, f"inputs x of the {split} split")
        self.split, self.tasks = split, tuple(tasks)
        self.x = data.x.to(device, dtype=dtype)  # the model's floating dtype
        self.n_features = tuple(data.x.shape[1:])
        self.y: dict[str, Tensor] | Tensor = {}
        self.masks: dict[str, Tensor] = {}
        self.host_masks: dict[str, np.ndarray] = {}
        given = data.masks or {}
        for task in tasks:
            if task.name not in data.targets:
                raise ValueError(
                    f"task {task.name!r}: no target column in the {split} split; "
                    f"its columns are {list(data.targets)}"
                )
            target, known = task.prepare(data.targets[task.name], split, given.get(task.name))
            self.y[task.name] = _on(target, device, dtype)
            if known is not None:
                if not bool(known.any()):
                    raise ValueError(f"task {task.name!r}: no labelled row in the {split} split")
                self.masks[task.name] = known.to(device)
                self.host_masks[task.name] = known.numpy()

    def __len__(self) -> int:
        return len(self.x)

    def complete_steps(self, schedule: Schedule) -> bool:
        """Whether every batch holds every task: no task with missing labels."""
        return not self.host_masks

    def _bytes(self) -> int:
        """The inputs' and targets' size in bytes."""
        ys = [self.y] if isinstance(self.y, Tensor) else list(self.y.values())
        return sum(t.nelement() * t.element_size() for t in (self.x, *ys))

    def _labelled(self, rows: np.ndarray) -> list[int]:
        """Per task, its labelled rows among ``rows`` (host indices)."""
        return [
            len(rows) if mask is None else int(mask[rows].sum())
            for mask in (self.host_masks.get(task.name) for task in self.tasks)
        ]

    def _batch(self, host_index: np.ndarray, index: Tensor | slice) -> SharedBatch | None:
        y = _rows(self.y, index)
        if not self.host_masks:
            return SharedBatch(self.x[index], y, None, None, [len(host_index)] * len(self.tasks))
        labelled = self._labelled(host_index)
        positions = [i for i, count in enumerate(labelled) if count]
        if not positions:
            return None
        counts = [labelled[i] for i in positions]
        masks = {name: mask[index] for name, mask in self.masks.items()}
        return SharedBatch(self.x[index], y, masks, tuple(positions), counts)

    def epoch(
        self, generator: torch.Generator, batch_size: int, shard: Any = None
    ) -> Iterator[SharedBatch]:
        """Shuffled batches; the permutation is drawn on the CPU and copied once per epoch.
        With ``shard`` (a data-parallel fit) each batch is this process's slice of the step's
        rows, its ``counts`` those of the whole step (with missing labels, see
        :meth:`_masked_slice`)."""
        order = torch.randperm(len(self), generator=generator)
        on_device = order.to(self.x.device)
        if shard is None and not self.host_masks and self._bytes() <= SHUFFLE_COPY_BYTES:
            # every row labelled: shuffle the rows once per epoch (one gather of x and of y)
            # and hand out consecutive slices, views without a copy, instead of one gather per
            # step; the batches are the same rows in the same order. The shuffled copy doubles
            # the data's memory for the epoch, hence the bound on its size
            x, y, k = self.x[on_device], _rows(self.y, on_device), len(self.tasks)
            for lo in range(0, len(self), batch_size):
                hi = min(lo + batch_size, len(self))
                yield SharedBatch(x[lo:hi], _rows(y, slice(lo, hi)), None, None, [hi - lo] * k)
            return
        for host, index in zip(order.split(batch_size), on_device.split(batch_size), strict=True):
            if shard is None:
                batch = self._batch(host.numpy(), index)
            elif self.host_masks:
                batch = self._masked_slice(host.numpy(), index, shard)
            else:
                n = len(host)
                lo, hi, share = _slice(n, shard)
                batch = self._batch(host[lo:hi].numpy(), index[lo:hi])
                batch.counts, batch.share = [n] * len(self.tasks), share
            if batch is not None:
                yield batch

    def _masked_slice(self, host: np.ndarray, index: Tensor, shard: Any) -> SharedBatch | None:
        """This process's slice of a step of data with missing labels: the tasks present and
        their labelled rows are the whole step's (the same on every process), and each task's
        loss here is weighted by this process's share of its labelled rows."""
        lo, hi, share = _slice(len(host), shard)
        step, mine = self._labelled(host), self._labelled(host[lo:hi])
        positions = [i for i, count in enumerate(step) if count]
        if not positions:
            return None
        counts = [step[i] for i in positions]
        local = [mine[i] if share else 0 for i in positions]  # a process without rows: none
        rows = index[lo:hi]
        masks = {name: mask[rows] for name, mask in self.masks.items()}
        return SharedBatch(
            self.x[rows],
            _rows(self.y, rows),
            masks,
            tuple(positions),
            counts,
            share,
            tuple(local),
        )

    def partial_multilabel(self) -> list[str]:
        """The multilabel tasks with missing entries inside labelled rows (NaN targets there;
        a row without any label is masked out as a whole)."""
        if not isinstance(self.y, dict):  # the column layout: regression tasks only
            return []
        return _partial(self.tasks, lambda name: (self.y[name], self.masks.get(name)))

    def chunks(self, size: int) -> Iterator[SharedBatch]:
        """Consecutive batches covering every row once (for evaluation)."""
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            batch = self._batch(np.arange(start, stop), slice(start, stop))
            if batch is not None:
                yield batch


@dataclass
class _TaskPart:
    data: TaskData
    x: Tensor | None  # dense inputs on the device; None for sparse inputs (sliced per batch)
    y: Tensor
    mask: Tensor | None
    host_mask: np.ndarray | None


class PerTaskSource:
    """One :class:`TaskData` per task on the device (sparse inputs stay CSR on the host and
    are sliced a batch at a time)."""

    def __init__(
        self,
        data: Mapping[str, TaskData],
        split: str,
        tasks: Sequence[Task],
        device: torch.device,
        *,
        sparse_input: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.split, self.tasks, self.device = split, tuple(tasks), device
        self.sparse_input, self.dtype = sparse_input, dtype
        names = [t.name for t in tasks]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ValueError(f"{split} data for unknown tasks {unknown}; the tasks are {names}")
        self.parts: dict[str, _TaskPart] = {}
        widths = set()
        for task in tasks:
            if task.name not in data:
                raise ValueError(
                    f"task {task.name!r}: no data in the {split} split; it has {list(data)}"
                )
            part = data[task.name]
            where = f"task {task.name!r}, {split} split"
            if len(part) == 0:
                raise ValueError(f"{where}: the split is empty")
            check_finite(part.x, f"inputs x of {where}")
            widths.add(part.n_features)
            mask = None if part.mask is None else torch.from_numpy(part.mask)
            target, known = task.prepare(part.y, f"{split} data of the task", mask)
            if known is not None and not bool(known.any()):
                raise ValueError(f"{where}: no labelled row")
            self.parts[task.name] = _TaskPart(
                part,
                None if part.sparse else part.x.to(device, dtype=dtype),
                _on(target, device, dtype),
                None if known is None else known.to(device),
                None if known is None else known.numpy(),
            )
        if len(widths) > 1:
            raise ValueError(f"{split} split: the tasks' inputs differ in width: {sorted(widths)}")
        self.n_features = (widths.pop(),)

    def partial_multilabel(self) -> list[str]:
        """The multilabel tasks with missing entries inside labelled rows."""
        return _partial(self.tasks, lambda name: (self.parts[name].y, self.parts[name].mask))

    def complete_steps(self, schedule: Schedule) -> bool:
        """Whether every step of ``schedule`` holds every task: round robin that does not let
        tasks end (``max_size``), and no task with missing labels."""
        masked = any(part.host_mask is not None for part in self.parts.values())
        return not masked and schedule.kind == "round_robin" and schedule.size_mode != "max_size"

    def sizes(self) -> dict[str, int]:
        return {name: len(part.data) for name, part in self.parts.items()}

    def _part(
        self, position: int, host_index: np.ndarray, keep_unlabelled: bool = False
    ) -> TaskBatch | None:
        name = self.tasks[position].name
        part = self.parts[name]
        count = len(host_index) if part.host_mask is None else int(part.host_mask[host_index].sum())
        if count == 0 and not keep_unlabelled:
            return None
        index = torch.from_numpy(host_index).to(self.device)
        if part.x is None:
            x = csr_batch(part.data.x[host_index], sparse_tensor=self.sparse_input)
            x = x.to(self.device, dtype=self.dtype, non_blocking=True)
        else:
            x = part.x[index]
        mask = None if part.mask is None else part.mask[index]
        return TaskBatch(position, x, part.y[index], mask, count)

    def epoch(
        self, schedule: Schedule, batch_size: int, seed: int, shard: Any = None
    ) -> Iterator[PerTaskBatch]:
        """The steps of one epoch; with ``shard``, this process's slice of each task's rows."""
        positions = {t.name: i for i, t in enumerate(self.tasks)}
        for step in schedule.epoch(self.sizes(), batch_size, seed):
            if shard is None:
                parts = [self._part(positions[name], index) for name, index in step]
            else:
                parts = []
                for name, index in step:
                    lo, hi, share = _slice(len(index), shard)
                    mask = self.parts[name].host_mask
                    if mask is None:
                        part = self._part(positions[name], index[lo:hi])
                        part.count, part.share, part.row_share = len(index), share, share
                    elif (count := int(mask[index].sum())) == 0:
                        part = None  # no label of the task in the whole step
                    else:  # each process weighs the loss by its share of the step's labels
                        part = self._part(positions[name], index[lo:hi], keep_unlabelled=True)
                        here = int(mask[index[lo:hi]].sum()) if share else 0
                        part.count, part.share, part.local_count = count, here / count, here
                        part.row_share = share
                    parts.append(part)
            parts = [p for p in parts if p is not None]
            if parts:
                yield PerTaskBatch(parts)

    def chunks(self, size: int) -> Iterator[PerTaskBatch]:
        for position, task in enumerate(self.tasks):
            n = len(self.parts[task.name].data)
            for start in range(0, n, size):
                part = self._part(position, np.arange(start, min(start + size, n)))
                if part is not None:
                    yield PerTaskBatch([part])


def make_source(
    data: MultiTargetData | Mapping[str, TaskData],
    split: str,
    tasks: Sequence[Task],
    device: torch.device,
    *,
    sparse_input: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Source:
    """The trainer's view of one split: one dataset for every task, one ``TaskData`` per task,
    or one ``DataLoader`` / ``Dataset`` per task. Inputs and real-valued targets take
    ``dtype``, the model's floating dtype."""
    if isinstance(data, MultiTargetData):
        return SharedSource(data, split, tasks, device, dtype)
    if isinstance(data, Mapping) and all(isinstance(v, TaskData) for v in data.values()):
        return PerTaskSource(data, split, tasks, device, sparse_input=sparse_input, dtype=dtype)
    if isinstance(data, Mapping):  # the user's own per-task DataLoaders or Datasets
        from ._loader_source import LoaderSource  # it builds on this module's batch types

        return LoaderSource(data, split, tasks, device, sparse_input=sparse_input, dtype=dtype)
    raise TypeError(
        f"the {split} data must be a MultiTargetData or a mapping task -> TaskData, "
        f"DataLoader or Dataset, got {type(data).__name__}"
    )
