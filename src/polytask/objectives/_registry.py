"""Short names for the command line and configuration files."""

from __future__ import annotations

from collections.abc import Callable

from ._base import Objective
from ._loss_level import GeometricMean, Mean, Sum, Uncertainty, Weighted


def _weighted(args: list[str]) -> Objective:
    if not args:
        raise ValueError("'weighted' needs its weights, e.g. weighted:1:2:0.5")
    try:
        return Weighted([float(a) for a in args])
    except ValueError as error:
        raise ValueError(f"'weighted:{':'.join(args)}': {error}") from None


def _plain(cls: type[Objective]) -> Callable[[list[str]], Objective]:
    def build(args: list[str]) -> Objective:
        if args:
            raise ValueError(f"{cls.__name__} takes no arguments, got {args}")
        return cls()

    return build


OBJECTIVES: dict[str, Callable[[list[str]], Objective]] = {
    "sum": _plain(Sum),
    "mean": _plain(Mean),
    "mse": _plain(Mean),
    "weighted": _weighted,
    "geometric": _plain(GeometricMean),
    "uncertainty": _plain(Uncertainty),
    "uw": _plain(Uncertainty),
}


def make_objective(spec: str) -> Objective:
    """Build an objective from its CLI name, e.g. ``"geometric"`` or ``"weighted:1:2:0.5"``.

    Examples
    --------
    >>> type(make_objective("mse")).__name__
    'Mean'
    """
    name, *args = spec.strip().split(":")
    key = name.lower()
    if key not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[key](args)
