"""Checks of the numbers a user gives, shared by the public API so that one mistake reads the
same everywhere."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch


def as_int(value: object, what: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``: any integral number (a numpy integer, a
    0-d integer tensor); a bool, a float or a string is refused, as is a smaller value.

    Raises
    ------
    ValueError
        Naming ``what``, the range and the value.

    Examples
    --------
    >>> as_int(np.int64(3), "size")
    3
    >>> as_int(2.5, "batch_size")
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive integer, got 2.5
    """
    boolean = isinstance(value, bool | np.bool_) or getattr(value, "dtype", None) is torch.bool
    try:
        number = None if boolean else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < minimum:
        expected = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return number


def differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """``"key: theirs -> ours"`` for each key of ``ours`` whose value ``theirs`` does not hold
    (a checkpoint's or a study's fingerprint against this run's), for the refusal's message.

    Examples
    --------
    >>> differences({"seed": 0, "lr": 0.1}, {"seed": 1, "lr": 0.1})
    ['seed: 0 -> 1']
    """
    return [
        f"{key}: {theirs.get(key, '-')} -> {value}"
        for key, value in ours.items()
        if theirs.get(key) != value
    ]


def check_finite(x: torch.Tensor | sp.spmatrix, where: str) -> None:
    """Refuse NaN or inf in inputs ``x`` (a dense tensor, or a scipy sparse matrix whose stored
    values are read), naming ``where`` and the first row that holds one.

    Examples
    --------
    >>> check_finite(torch.tensor([[0.0], [float("nan")]]), "inputs x")
    Traceback (most recent call last):
    ...
    ValueError: inputs x: non-finite value (NaN or inf) at row 1
    """
    if sp.issparse(x):
        csr = sp.csr_matrix(x)  # shares the arrays of a CSR matrix
        finite = np.isfinite(csr.data)
        if finite.all():
            return
        row = int(np.searchsorted(csr.indptr, np.argmin(finite), side="right")) - 1
    else:
        finite = torch.isfinite(x)
        if bool(finite.all()):
            return
        row = int((~finite).reshape(len(x), -1).any(1).nonzero()[0, 0])
    raise ValueError(f"{where}: non-finite value (NaN or inf) at row {row}")
