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
    "reviews": "_reviews",
    "adult-education": "_adult_education",
    "hetero": "_synthetic",
    "phase": "_synthetic",
}
"""Data set name -> the module (of this package) that defines its ``SPEC`` (or, for a module
of several, its ``SPECS`` by name)."""

DATASET_NAMES = tuple(_MODULES)
SUITE_DATASETS = DATASET_NAMES[:8]
"""The benchmark suite's default data sets: the multi-output sets of ``../shared/data``. The
others describe the data of today's named experiments (``reviews`` and ``adult-education``
re-use those files; ``hetero`` and ``phase`` are generated) and run in a suite when named."""


def dataset(name: str) -> DatasetSpec:
    """The description of data set ``name``.

    Examples
    --------
    >>> DATASET_NAMES[:2]
    ('energy', 'concrete')
    """
    if name not in _MODULES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(_MODULES)}")
    module = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    spec = module.SPECS[name] if hasattr(module, "SPECS") else module.SPEC
    if spec.name != name:
        raise RuntimeError(f"the module of data set {name!r} describes {spec.name!r}")
    return spec


__all__ = [
    "DATASET_NAMES",
    "SUITE_DATASETS",
    "DataFormatError",
    "DatasetSpec",
    "Part",
    "Splits",
    "dataset",
    "shared_bottom",
]
