"""Short names for the command line and configuration files."""

from __future__ import annotations

from collections.abc import Callable

from ._base import Objective
from ._gradient import (
    DBMTL,
    IMTL,
    MGDA,
    PATHS,
    AlignedMTL,
    CAGrad,
    FairGrad,
    GradientObjective,
    GradNorm,
    GradVac,
    NashMTL,
    PCGrad,
    UPGrad,
)
from ._loss_level import GeometricMean, Mean, Sum, Uncertainty, Weighted
from ._loss_zoo import DWA, FAMO, IMTLL, RLW


def _weighted(args: list[str]) -> Objective:
    if not args:
        raise ValueError("'weighted' needs its weights, e.g. weighted:1:2:0.5")
    try:
        return Weighted([float(a) for a in args])
    except ValueError as error:
        raise ValueError(f"'weighted:{':'.join(args)}': {error}") from None


def _plain(cls: type[Objective], **options: object) -> Callable[[list[str]], Objective]:
    def build(args: list[str]) -> Objective:
        if args:
            raise ValueError(f"{cls.__name__} takes no arguments, got {args}")
        return cls(**options)

    build.cls = cls  # type: ignore[attr-defined]
    return build


OBJECTIVES: dict[str, Callable[[list[str]], Objective]] = {
    "sum": _plain(Sum),
    "mean": _plain(Mean),
    "mse": _plain(Mean),
    "equal": _plain(Mean),
    "weighted": _weighted,
    "geometric": _plain(GeometricMean),
    "gls": _plain(GeometricMean),
    "uncertainty": _plain(Uncertainty),
    "uw": _plain(Uncertainty),
    "dwa": _plain(DWA),
    "rlw": _plain(RLW),
    "famo": _plain(FAMO),
    "imtl-l": _plain(IMTLL),
    "gradnorm": _plain(GradNorm),
    "mgda": _plain(MGDA),
    "mgda-ub": _plain(MGDA, path="representation"),
    "pcgrad": _plain(PCGrad),
    "gradvac": _plain(GradVac),
    "cagrad": _plain(CAGrad),
    "imtl": _plain(IMTL),
    "imtl-g": _plain(IMTL),
    "nashmtl": _plain(NashMTL),
    "aligned-mtl": _plain(AlignedMTL),
    "upgrad": _plain(UPGrad),
    "dbmtl": _plain(DBMTL),
    "fairgrad": _plain(FairGrad),
}

PATH_ALIASES = {
    "exact": "exact",
    "repr": "representation",
    "representation": "representation",
    "naive": "naive",
}


def make_objective(spec: str) -> Objective:
    """Build an objective from its CLI name, e.g. ``"geometric"``, ``"weighted:1:2:0.5"`` or,
    for a gradient method, ``"pcgrad@repr"`` (path ``exact``, ``repr`` or ``naive``).

    Examples
    --------
    >>> type(make_objective("mse")).__name__
    'Mean'
    >>> make_objective("upgrad@repr").path
    'representation'
    """
    text, _, path = spec.strip().partition("@")
    name, *args = text.split(":")
    key = name.lower()
    if key not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(OBJECTIVES))}")
    objective = OBJECTIVES[key](args)
    if path:
        if not isinstance(objective, GradientObjective) or len(objective.paths) == 1:
            raise ValueError(f"{name!r} has no gradient path to choose; drop '@{path}'")
        if path not in PATH_ALIASES:
            raise ValueError(f"unknown path {path!r}; choose one of exact, repr, naive")
        objective.path = PATH_ALIASES[path]
    return objective


__all__ = ["OBJECTIVES", "PATHS", "PATH_ALIASES", "make_objective"]
