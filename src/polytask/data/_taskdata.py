"""One task's own dataset: dense or sparse inputs, targets, an optional label mask."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from ._multitarget import _as_tensor, _mask, _storage, _stored

# torch warns once per process that sparse CSR support is in beta; the layout is what we need
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)

Inputs = np.ndarray | Tensor | sp.csr_matrix | sp.csr_array


class TaskData:
    """Inputs and targets of one task, when each task has a dataset of its own.

    Parameters
    ----------
    x
        Inputs: a numpy array, a torch tensor, or a scipy sparse CSR matrix (e.g. bag-of-words
        counts). Sparse inputs stay sparse in memory; a batch is sliced from the CSR matrix in
        one operation and converted as a whole (see :meth:`inputs`), never row by row.
    y
        Targets, one row per input row.
    mask
        Optional boolean array: which rows carry a label (others are skipped by losses and
        metrics).
    dtype
        How the inputs are stored, as for :class:`~polytask.MultiTargetData`: float32 by
        default (float64 arrays rounded), float64 to keep them exact.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> data = TaskData(sp.csr_matrix(np.eye(4, dtype=np.float32)), np.array([0, 1, 0, 1]))
    >>> data.inputs(np.array([2, 0])).to_dense().tolist()
    [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    """

    def __init__(
        self,
        x: Inputs,
        y: ArrayLike | Tensor,
        *,
        mask: ArrayLike | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.dtype = dtype
        if isinstance(x, Tensor) and x.layout != torch.strided:
            x = _scipy_csr(x)  # a torch sparse tensor: the scipy CSR matrix sparse inputs are
        if sp.issparse(x):
            self.rounded = x.dtype == np.float64 and dtype == torch.float32
            self.x = sp.csr_matrix(x, dtype=_storage(dtype))
        else:
            x = _as_tensor(x, "inputs x")
            x = x[:, None] if x.ndim == 1 else x
            self.x, self.rounded = _stored(x, dtype)
        self.y = _as_tensor(y, "targets y")
        if self.y.ndim == 0 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"targets y have {self.y.shape[0] if self.y.ndim else 0} rows, "
                f"inputs x have {self.x.shape[0]}"
            )
        # one 0/1 (or boolean) flag per row, checked as MultiTargetData checks its masks
        self.mask = (
            None
            if mask is None
            else _mask("mask", _as_tensor(mask, "mask"), self.x.shape[0]).numpy()
        )

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.x)

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: slice | np.ndarray) -> TaskData:
        """The rows selected by ``index``."""
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        x = self.x[rows] if self.sparse else self.x[torch.from_numpy(rows)]
        mask = None if self.mask is None else self.mask[rows]
        subset = TaskData(x, self.y[torch.from_numpy(rows)], mask=mask, dtype=self.dtype)
        subset.rounded = self.rounded
        return subset

    def inputs(self, index: np.ndarray, *, sparse_tensor: bool = True) -> Tensor:
        """The input rows ``index`` as one tensor (on the CPU).

        Sparse data are sliced in one CSR operation, then wrapped as a torch sparse CSR tensor
        (``sparse_tensor=True``; ``nn.Linear`` accepts it as input) or densified as a batch.
        """
        if not self.sparse:
            return self.x[torch.from_numpy(np.asarray(index))]
        return csr_batch(self.x[index], sparse_tensor=sparse_tensor)


def csr_batch(rows: sp.csr_matrix, *, sparse_tensor: bool = True) -> Tensor:
    """A scipy CSR batch as a torch sparse CSR tensor, or as a dense float tensor."""
    if not sparse_tensor:
        return torch.from_numpy(rows.toarray())
    # scipy's int32 index arrays are shared, not copied; torch and embedding_bag take int32
    return torch.sparse_csr_tensor(
        torch.from_numpy(rows.indptr),
        torch.from_numpy(rows.indices),
        torch.from_numpy(rows.data),
        size=rows.shape,
        check_invariants=False,
    )


def _scipy_csr(x: Tensor) -> sp.csr_matrix:
    """A torch sparse (CSR or COO) tensor of shape ``(rows, features)`` as a scipy CSR matrix."""
    if x.ndim != 2:
        raise ValueError(f"inputs x: a sparse tensor of shape {tuple(x.shape)}, expected 2-D")
    if x.layout == torch.sparse_coo:
        x = x.coalesce()
        rows, cols = x.indices().cpu().numpy()
        return sp.csr_matrix((x.values().cpu().numpy(), (rows, cols)), shape=tuple(x.shape))
    if x.layout == torch.sparse_csr:
        parts = (x.values(), x.col_indices(), x.crow_indices())
        return sp.csr_matrix(tuple(p.cpu().numpy() for p in parts), shape=tuple(x.shape))
    raise TypeError(f"inputs x: a tensor of layout {x.layout}; give a scipy CSR matrix")
