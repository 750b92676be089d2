"""Ways to turn several task losses into one training signal, behind one interface.

Loss-level methods combine the losses into one scalar; gradient-level methods map the task
gradients (their Gramian or Jacobian, seen through :class:`TaskGradients`) to an update. Both
are :class:`Objective` s and neither knows the model: the gradient engine runs either.
"""

from ._base import LossObjective, Objective, Step, TaskGradients
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
from ._registry import OBJECTIVES, make_objective
from ._terms import Consistency, Hierarchical, Term, WithTerms

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "IMTL",
    "IMTLL",
    "MGDA",
    "OBJECTIVES",
    "PATHS",
    "RLW",
    "AlignedMTL",
    "CAGrad",
    "Consistency",
    "FairGrad",
    "GeometricMean",
    "GradNorm",
    "GradVac",
    "GradientObjective",
    "Hierarchical",
    "LossObjective",
    "Mean",
    "NashMTL",
    "Objective",
    "PCGrad",
    "Step",
    "Sum",
    "TaskGradients",
    "Term",
    "UPGrad",
    "Uncertainty",
    "Weighted",
    "WithTerms",
    "make_objective",
]
