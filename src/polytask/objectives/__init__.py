"""Ways to turn several task losses into one training signal, behind one interface."""

from ._base import LossObjective, Objective, Step
from ._loss_level import GeometricMean, Mean, Sum, Uncertainty, Weighted
from ._registry import OBJECTIVES, make_objective

__all__ = [
    "OBJECTIVES",
    "GeometricMean",
    "LossObjective",
    "Mean",
    "Objective",
    "Step",
    "Sum",
    "Uncertainty",
    "Weighted",
    "make_objective",
]
