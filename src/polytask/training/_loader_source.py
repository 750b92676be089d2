"""The trainer's source for the user's own per-task ``DataLoader``s or ``Dataset``s.

A drop-in for :class:`~polytask.training._sources.PerTaskSource`: the same ``epoch`` /
``chunks`` interface and batches, but each task's rows come from its own loader, validated a
batch at a time (and the first batch of every task before any step, by :meth:`preflight`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._checks import check_finite
from ..data import Schedule, csr_batch
from ..data._loaders import LoaderLike, LoaderPass, as_loaders, mixed_steps
from ..tasks import Task
from ._sources import PerTaskBatch, TaskBatch, shard_part

PREFLIGHT_BATCH = 2
"""Rows a wrapped ``Dataset`` gives in :meth:`LoaderSource.preflight`."""


class LoaderSource:
    """One ``DataLoader`` (or map-style ``Dataset``) per task, mixed by the trainer's schedule.

    Parameters
    ----------
    loaders
        Task -> ``DataLoader`` or map-style ``Dataset``. A batch (a loader's item, a collated
        dataset batch) is ``(x, y)`` or ``(x, y, mask)``: inputs ``x`` (a dense tensor or
        array, a torch sparse CSR tensor or a scipy sparse matrix), targets ``y`` (validated
        and converted by :meth:`Task.prepare`), an optional boolean mask of labelled rows.
        A ``Dataset`` is batched with the trainer's ``batch_size`` (shuffled each pass) in
        :meth:`epoch`, with the evaluation size in :meth:`chunks`; a ``DataLoader`` keeps its
        own batch size and sampler in both.
    split
        The split's name, for error messages (``"train"``, ``"stop"``...).
    tasks
        The tasks, in the model's order; each needs a loader and no loader may be left over.
    device
        Where batches go.
    sparse_input
        Sparse inputs as torch sparse CSR tensors (True) or densified per batch (False).

    The constructor runs :meth:`preflight`: the first batch of every task is drawn and checked
    before any training step, and it sets :attr:`n_features`.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from polytask import Task
    >>> loaders = {"a": DataLoader(TensorDataset(torch.zeros(5, 3), torch.zeros(5)), batch_size=2),
    ...            "b": TensorDataset(torch.ones(3, 3), torch.ones(3))}
    >>> source = LoaderSource(loaders, "train", [Task("a"), Task("b")], torch.device("cpu"))
    >>> source.n_features
    (3,)
    >>> [batch.positions for batch in source.epoch(Schedule("round_robin"), 2, seed=0)]
    [(0, 1), (0, 1), (0, 1)]
    >>> [batch.counts for batch in source.chunks(4)]
    [[2], [2], [1], [3]]
    """

    def __init__(
        self,
        loaders: Mapping[str, LoaderLike],
        split: str,
        tasks: Sequence[Task],
        device: torch.device,
        *,
        sparse_input: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.split, self.tasks, self.device, self.dtype = split, tuple(tasks), device, dtype
        self._numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype  # for scipy batches
        self.sparse_input = sparse_input
        if not isinstance(loaders, Mapping):
            raise TypeError(
                f"the {split} data must be a mapping task -> DataLoader or Dataset, "
                f"got {type(loaders).__name__}"
            )
        names = [t.name for t in self.tasks]
        unknown = [k for k in loaders if k not in names]
        if unknown:
            raise ValueError(f"{split} loaders for unknown tasks {unknown}; the tasks are {names}")
        missing = [name for name in names if name not in loaders]
        if missing:
            raise ValueError(
                f"task {missing[0]!r}: no loader in the {split} split; it has {list(loaders)}"
            )
        self.loaders: dict[str, LoaderLike] = {name: loaders[name] for name in names}
        self.n_features: tuple[int, ...] = ()
        self.masked: dict[str, bool] = {}
        """Task -> whether its batches carry a label mask (set by :meth:`preflight`)."""
        self._warned = False  # of a loader that does not shuffle (once per source)
        self.preflight()

    # -- checks -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Draw the first batch of every task and validate it (inputs, targets, mask, the same
        input shape for every task), so that bad input fails before any step.

        A ``Dataset`` gives its first :data:`PREFLIGHT_BATCH` rows; a ``DataLoader`` its first
        batch, drawn without touching torch's global random state. Whether a task's first batch
        is ``(x, y)`` or ``(x, y, mask)`` fixes the form of all its batches (:attr:`masked`).
        """
        loaders = as_loaders(self.loaders, PREFLIGHT_BATCH, shuffle=False)
        shapes = {}
        self.masked = {}
        for position, task in enumerate(self.tasks):
            try:
                batch = next(LoaderPass(loaders[task.name], 0))
            except StopIteration:
                raise ValueError(
                    f"task {task.name!r}: its {self.split} loader gave no batch"
                ) from None
            x, _, _ = self._convert(position, batch, 0)
            shapes[task.name] = tuple(x.shape[1:])
            self.masked[task.name] = len(batch) == 3
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"{self.split} split: the tasks' inputs differ in shape per row: {shapes}"
            )
        self.n_features = next(iter(shapes.values()))

    def _where(self, position: int, index: int) -> str:
        return f"task {self.tasks[position].name!r}, batch {index} of its {self.split} loader"

    def _inputs(self, x: Any, where: str) -> Tensor:
        """A batch's inputs as a tensor of the model's dtype on the host side of the copy:
        dense, or sparse CSR (a torch CSR tensor or a scipy sparse matrix) unless
        ``sparse_input`` is off."""
        if sp.issparse(x):
            rows = sp.csr_matrix(x, dtype=self._numpy_dtype)
            check_finite(rows, f"inputs x of {where}")
            return csr_batch(rows, sparse_tensor=self.sparse_input)
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, Tensor):
            raise TypeError(
                f"inputs x of {where}: expected a tensor, an array or a scipy sparse matrix, "
                f"got {type(x).__name__}"
            )
        if x.layout == torch.sparse_csr:
            if not bool(torch.isfinite(x.values()).all()):
                raise ValueError(f"inputs x of {where}: non-finite value in the sparse tensor")
            x = x if x.dtype == self.dtype else x.to(self.dtype)
            return x if self.sparse_input else x.to_dense()
        if x.layout != torch.strided:
            raise ValueError(
                f"inputs x of {where}: layout {x.layout}; expected a dense or a sparse CSR "
                "tensor (convert with x.to_sparse_csr())"
            )
        if x.ndim == 0:
            raise ValueError(f"inputs x of {where}: got a scalar; expected shape (n, features)")
        x = x[:, None] if x.ndim == 1 else x
        x = x if x.dtype == self.dtype else x.to(self.dtype)
        check_finite(x, f"inputs x of {where}")
        return x

    def _convert(
        self, position: int, batch: Any, index: int
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """A loader's batch checked and converted: inputs, prepared targets, labelled rows."""
        task = self.tasks[position]
        where = self._where(position, index)
        if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
            sized = isinstance(batch, tuple | list)
            got = f"a {len(batch)}-tuple" if sized else f"a {type(batch).__name__}"
            raise TypeError(f"{where}: got {got}; expected (x, y) or (x, y, mask)")
        if task.name in self.masked and self.masked[task.name] != (len(batch) == 3):
            first = "(x, y, mask)" if self.masked[task.name] else "(x, y)"
            raise ValueError(f"{where}: a {len(batch)}-tuple, but its first batch was {first}")
        x = self._inputs(batch[0], where)
        y = batch[1] if isinstance(batch[1], Tensor) else torch.as_tensor(np.asarray(batch[1]))
        n = x.shape[0]
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(
                f"{where}: targets y have {y.shape[0] if y.ndim else 0} rows, inputs x have {n}"
            )
        mask = None
        if len(batch) == 3:
            mask = torch.as_tensor(batch[2])
            if tuple(mask.shape) != (n,):
                raise ValueError(f"{where}: mask of shape {tuple(mask.shape)}, expected ({n},)")
            mask = mask.to(torch.bool)
        try:
            target, known = task.prepare(y, self.split, mask)
        except ValueError as error:
            raise ValueError(f"{error} (batch {index} of its {self.split} loader)") from None
        return x, target, known

    def _part(self, position: int, batch: Any, index: int) -> TaskBatch | None:
        x, target, known = self._convert(position, batch, index)
        if tuple(x.shape[1:]) != self.n_features:
            raise ValueError(
                f"inputs x of {self._where(position, index)}: shape per row "
                f"{tuple(x.shape[1:])}, expected {self.n_features} as in the first batches"
            )
        count = x.shape[0] if known is None else int(known.sum())
        if count == 0:
            return None
        device = self.device
        mask = None if known is None else known.to(device, non_blocking=True)
        x = x.to(device, non_blocking=True)
        if target.is_floating_point():  # real-valued targets in the model's dtype
            target = target.to(self.dtype)
        return TaskBatch(position, x, target.to(device, non_blocking=True), mask, count)

    def check_shardable(self) -> None:
        """Refuse, before a data-parallel fit starts, loaders that already split their rows
        between processes (see :func:`_refuse_distributed_samplers`)."""
        _refuse_distributed_samplers(self.loaders)

    def complete_steps(self, schedule: Schedule) -> bool:
        """Whether every step of ``schedule`` holds every task (what methods with per-task
        state need): round robin that does not let tasks end (``max_size``), and no task whose
        batches may lack labels (a mask in its batches, or ``allow_missing``)."""
        partial = any(self.masked[t.name] or t.allow_missing for t in self.tasks)
        return not partial and schedule.kind == "round_robin" and schedule.size_mode != "max_size"

    # -- batches ------------------------------------------------------------------------------
    def epoch(
        self, schedule: Schedule, batch_size: int, seed: int, shard: Any = None
    ) -> Iterator[PerTaskBatch]:
        """The steps of one epoch, the tasks' loaders mixed by ``schedule`` (counted in
        batches, ``len(loader)`` per pass); ``batch_size`` batches the wrapped datasets.
        The same ``seed`` gives the same steps (see :func:`polytask.data.mix_loaders`). With
        ``shard`` (a data-parallel fit) every process draws the same batches and keeps its
        slice of each: a loader's batch is the global batch."""
        loaders = as_loaders(self.loaders, batch_size, shuffle=True)
        if not self._warned:
            self._warned = True
            _warn_unshuffled(loaders, schedule)
        positions = {t.name: i for i, t in enumerate(self.tasks)}
        served = dict.fromkeys(positions, 0)
        for step in mixed_steps(loaders, schedule, (seed,)):
            parts = []
            for name, batch in step:
                part = self._part(positions[name], batch, served[name])
                served[name] += 1
                if part is not None:
                    parts.append(part if shard is None else shard_part(part, shard))
            if parts:
                yield PerTaskBatch(parts)

    def chunks(self, size: int) -> Iterator[PerTaskBatch]:
        """One pass over every task's loader, a task at a time (for evaluation): a wrapped
        dataset in order by ``size`` rows, a ``DataLoader`` in its own batches and order."""
        loaders = as_loaders(self.loaders, size, shuffle=False)
        for position, task in enumerate(self.tasks):
            for index, batch in enumerate(LoaderPass(loaders[task.name], 0)):
                part = self._part(position, batch, index)
                if part is not None:
                    yield PerTaskBatch([part])


def _warn_unshuffled(loaders: Mapping[str, Any], schedule: Schedule) -> None:
    """Each epoch restarts every loader: one that does not shuffle and is cut short by the
    schedule (``min_size``) gives the same first batches every epoch, and never the rest."""
    if schedule.size_mode != "min_size":
        return
    lengths = {name: len(loader) for name, loader in loaders.items()}
    shortest = min(lengths.values())
    for name, loader in loaders.items():
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.SequentialSampler) and lengths[name] > shortest:
            warnings.warn(
                f"task {name!r}: its DataLoader does not shuffle, and the min_size schedule "
                f"takes {shortest} of its {lengths[name]} batches per epoch: the same first "
                "batches every epoch, the others never (shuffle=True, or max_size_cycle)",
                UserWarning,
                stacklevel=4,
            )


def _refuse_distributed_samplers(loaders: Mapping[str, Any]) -> None:
    """A ``DistributedSampler`` already splits the rows between processes; polytask slices
    every batch again, so an epoch would see 1/W of the data: refuse it, saying why."""
    from torch.utils.data.distributed import DistributedSampler

    for name, loader in loaders.items():
        samplers = [getattr(loader, "sampler", None)]
        samplers.append(getattr(getattr(loader, "batch_sampler", None), "sampler", None))
        if any(isinstance(s, DistributedSampler) for s in samplers):
            raise ValueError(
                f"task {name!r}: its DataLoader has a DistributedSampler; in a data-parallel "
                "fit polytask gives each process its slice of every batch itself (batch_size "
                "and a loader's batches are global): pass the loader without it"
            )
