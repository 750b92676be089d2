"""Ways to turn several task losses into one training signal, behind one interface.

Loss-level methods combine the losses into one scalar; gradient-level methods weight the task
gradients from their Gramian. Both are :class:`Objective` s, so the trainer runs either.
"""

from ._base import LossObjective, Objective, Step
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
    TaskFeatures,
    UPGrad,
    gramian,
    task_jacobian,
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
    "TaskFeatures",
    "Term",
    "UPGrad",
    "Uncertainty",
    "Weighted",
    "WithTerms",
    "gramian",
    "make_objective",
    "task_jacobian",
]
