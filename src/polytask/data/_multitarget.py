"""One dataset with many target columns."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import ArrayLike
from torch import Tensor

# what a column of strings (class names, categories) should become
ENCODE_HINT = (
    "encode classes as integers 0..K-1 (e.g. with sklearn's LabelEncoder) and other strings "
    "as numbers"
)


def _as_tensor(values: ArrayLike | Tensor, what: str) -> Tensor:
    """``values`` as a tensor; strings and other non-numeric arrays are refused naming ``what``."""
    if isinstance(values, Tensor):
        return values
    if sp.issparse(values):
        raise TypeError(
            f"{what}: a scipy sparse matrix; sparse inputs go in one TaskData per task "
            "(pt.TaskData(x, y)), which keeps them sparse"
        )
    array = np.asarray(values)
    if array.dtype.kind in "USa" or (
        array.dtype == object and any(isinstance(v, str | bytes) for v in array.flat)
    ):
        raise TypeError(f"{what}: got strings (dtype {array.dtype}); {ENCODE_HINT}")
    if array.dtype == object:
        raise TypeError(f"{what}: expected a numeric array, got dtype object")
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{what}: expected a numeric array, got dtype {array.dtype}")
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


def _rows(column: Tensor) -> int:
    return column.shape[0] if column.ndim else 0


def _mask(where: str, mask: Tensor, n: int) -> Tensor:
    """A label mask (``where`` names it in errors) as booleans: one flag (True/False or 1/0)
    per row."""
    if mask.ndim == 1 and len(mask) != n:
        raise ValueError(f"{where} has {len(mask)} rows, inputs x have {n}")
    if mask.ndim != 1:
        raise ValueError(f"{where}: shape {tuple(mask.shape)}, expected ({n},), one flag per row")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{where}: values must be 0 or 1 (or booleans): True marks a labelled row")
    return mask.to(torch.bool)


class MultiTargetData:
    """Inputs ``x`` and one target column (or block of columns) per task, all of the same rows.

    Parameters
    ----------
    x
        Inputs of shape ``(n, features)`` (a 1-D array is read as one feature).
    targets
        Task name -> targets with ``n`` rows, numeric: class labels as integers ``0..K-1``
        (strings are refused; encode them first, e.g. with scikit-learn's ``LabelEncoder``).
    clean_targets
        Optional noiseless targets per task of ``targets`` (synthetic data), used by
        evaluation.
    masks
        Optional task of ``targets`` -> boolean (or 0/1) array of ``n`` rows marking the rows
        that carry a label for that task (partial labels; see also
        ``Task(allow_missing=True)``).
    dtype
        How the inputs are stored: ``torch.float32`` (the default: numpy's float64 arrays are
        rounded to it, halving their memory) or ``torch.float64`` to keep float64 inputs exact
        for a float64 model (the trainer warns when a float64 model reads rounded inputs).
        Regression targets keep float64 either way; a fit casts inputs and targets to the
        model's dtype.

    Raises
    ------
    ValueError
        For a column whose rows do not match ``x`` (naming the task and the column), or a mask
        or clean targets for a task without targets.
    TypeError
        For non-numeric arrays, such as string class labels.

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
            {
                name: _as_tensor(v, f"clean targets of task {name!r}")
                for name, v in clean_targets.items()
            }
            if clean_targets is not None
            else None
        )
        self.masks = (
            {name: _as_tensor(v, f"the mask of task {name!r}") for name, v in masks.items()}
            if masks
            else None
        )
        for what, group in (("clean targets", self.clean_targets), ("masks", self.masks)):
            unknown = sorted(set(group or {}) - set(self.targets))
            if unknown:
                raise ValueError(
                    f"{what} given for unknown tasks {unknown}; the tasks are {list(self.targets)}"
                )
        n = len(self.x)
        for name, column in self.targets.items():
            if column.ndim == 0 or len(column) != n:
                raise ValueError(
                    f"task {name!r}: targets have {_rows(column)} rows, inputs x have {n}"
                )
        for name, column in (self.clean_targets or {}).items():
            if column.ndim == 0 or len(column) != n:
                raise ValueError(
                    f"the clean targets of task {name!r} have {_rows(column)} rows, "
                    f"inputs x have {n}"
                )
        if self.masks is not None:
            self.masks = {
                name: _mask(f"the mask of task {name!r}", mask, n)
                for name, mask in self.masks.items()
            }

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
