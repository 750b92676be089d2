"""One dataset with many target columns."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor


def _as_tensor(values: ArrayLike | Tensor, what: str) -> Tensor:
    if isinstance(values, Tensor):
        return values
    array = np.asarray(values)
    if array.dtype == object:
        raise TypeError(f"{what}: expected a numeric array, got dtype object")
    return torch.from_numpy(np.ascontiguousarray(array))


# the dtypes inputs may be stored in, and their numpy twins (scipy sparse inputs)
STORED = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _storage(dtype: torch.dtype) -> np.dtype:
    """The numpy twin of a storage ``dtype``; any other dtype is refused."""
    if dtype not in STORED:
        raise ValueError(f"dtype: inputs are stored as torch.float32 or torch.float64, got {dtype}")
    return STORED[dtype]


def _stored(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, bool]:
    """Inputs in the storage ``dtype`` (integers and lower precisions converted), and whether
    float64 values were rounded to float32 on the way."""
    _storage(dtype)
    rounded = x.dtype == torch.float64 and dtype == torch.float32
    return (x if x.dtype == dtype else x.to(dtype)), rounded


class MultiTargetData:
    """Inputs ``x`` and one target column (or block of columns) per task, all of the same rows.

    Parameters
    ----------
    x
        Inputs of shape ``(n, features)`` (a 1-D array is read as one feature).
    targets
        Task name -> targets with ``n`` rows.
    clean_targets
        Optional noiseless targets per task (synthetic data), used by evaluation.
    masks
        Optional task -> boolean array marking the rows that carry a label for that task
        (partial labels; see also ``Task(allow_missing=True)``).
    dtype
        How the inputs are stored: ``torch.float32`` (the default: numpy's float64 arrays are
        rounded to it, halving their memory) or ``torch.float64`` to keep float64 inputs exact
        for a float64 model (the trainer warns when a float64 model reads rounded inputs).
        Regression targets keep float64 either way; a fit casts inputs and targets to the
        model's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> data = MultiTargetData(np.zeros((4, 2)), {"a": np.ones(4)})
    >>> len(data), data.task_names
    (4, ('a',))
    """

    def __init__(
        self,
        x: ArrayLike | Tensor,
        targets: Mapping[str, ArrayLike | Tensor],
        clean_targets: Mapping[str, ArrayLike | Tensor] | None = None,
        masks: Mapping[str, ArrayLike | Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        x = _as_tensor(x, "inputs x")
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim < 2:
            raise ValueError(f"inputs x: expected shape (n, features), got {tuple(x.shape)}")
        self.x, self.rounded = _stored(x, dtype)
        if not targets:
            raise ValueError("MultiTargetData needs at least one target column")
        self.targets = {
            name: _as_tensor(v, f"targets of task {name!r}") for name, v in targets.items()
        }
        self.clean_targets = (
            {name: _as_tensor(v, f"clean targets of {name!r}") for name, v in clean_targets.items()}
            if clean_targets is not None
            else None
        )
        self.masks = (
            {name: _as_tensor(v, f"mask of {name!r}").to(torch.bool) for name, v in masks.items()}
            if masks
            else None
        )
        n = len(self.x)
        for group in (self.targets, self.clean_targets or {}, self.masks or {}):
            for name, column in group.items():
                if column.ndim == 0 or len(column) != n:
                    raise ValueError(
                        f"task {name!r}: targets have {column.shape[0] if column.ndim else 0} "
                        f"rows, inputs x have {n}"
                    )

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.targets)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: slice | Tensor | np.ndarray) -> MultiTargetData:
        """The rows selected by ``index`` (a slice or an index array)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)

        def take(group: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if group is None else {k: v[index] for k, v in group.items()}

        subset = MultiTargetData(
            self.x[index],
            take(self.targets),
            take(self.clean_targets),
            take(self.masks),
            dtype=self.x.dtype,
        )
        subset.rounded = self.rounded
        return subset
