"""Benchmark data sets: each one a :class:`DatasetSpec` in a module of its own."""

from __future__ import annotations

import importlib

from ._spec import DataFormatError, DatasetSpec, Part, Splits, shared_bottom

_MODULES = {
    "energy": "_energy",
    "concrete": "_concrete",
    "parkinsons": "_parkinsons",
    "student": "_student",
    "census": "_census",
    "sentiment": "_sentiment",
    "sentiment-domains": "_sentiment_domains",
    "multimnist": "_multimnist",
}
"""Data set name -> the module (of this package) that defines its ``SPEC``."""

DATASET_NAMES = tuple(_MODULES)


def dataset(name: str) -> DatasetSpec:
    """The description of data set ``name``.

    Examples
    --------
    >>> DATASET_NAMES[:2]
    ('energy', 'concrete')
    """
    if name not in _MODULES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(_MODULES)}")
    spec = importlib.import_module(f"{__name__}.{_MODULES[name]}").SPEC
    if spec.name != name:
        raise RuntimeError(f"the module of data set {name!r} describes {spec.name!r}")
    return spec


__all__ = [
    "DATASET_NAMES",
    "DataFormatError",
    "DatasetSpec",
    "Part",
    "Splits",
    "dataset",
    "shared_bottom",
]
