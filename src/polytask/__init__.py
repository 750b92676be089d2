"""polytask: multi-task learning with deep networks on PyTorch.

Examples
--------
>>> import polytask as pt
>>> {"sum", "uw", "mgda", "upgrad"} <= set(pt.OBJECTIVES)  # every method, by name
True
>>> pt.make_objective("upgrad@repr")  # what Trainer("upgrad@repr") runs
UPGrad(path='representation')
"""

from .data import MultiTargetData, Schedule, TaskData, make_hetero, make_phase, split
from .engine import GradientEngine, TaskFeatures
from .evaluation import evaluate, predict, summarize
from .models import ColumnHeads, MultiTaskModel, MultiTaskModule, as_multitask, mlp
from .objectives import (
    DWA,
    FAMO,
    MGDA,
    OBJECTIVES,
    CAGrad,
    Consistency,
    GeometricMean,
    GradNorm,
    Hierarchical,
    Mean,
    NashMTL,
    Objective,
    PCGrad,
    Sum,
    Uncertainty,
    UPGrad,
    Weighted,
    make_objective,
)
from .tasks import Task, regression_tasks
from .training import (
    BestWeights,
    Callback,
    Checkpoint,
    EarlyStopping,
    History,
    NonFiniteLossError,
    Trainer,
)

__version__ = "0.1.0"

__all__ = [
    "DWA",
    "FAMO",
    "MGDA",
    "OBJECTIVES",
    "BestWeights",
    "CAGrad",
    "Callback",
    "Checkpoint",
    "ColumnHeads",
    "Consistency",
    "EarlyStopping",
    "GeometricMean",
    "GradNorm",
    "GradientEngine",
    "Hierarchical",
    "History",
    "Mean",
    "MultiTargetData",
    "MultiTaskModel",
    "MultiTaskModule",
    "NashMTL",
    "NonFiniteLossError",
    "Objective",
    "PCGrad",
    "Schedule",
    "Sum",
    "Task",
    "TaskData",
    "TaskFeatures",
    "Trainer",
    "UPGrad",
    "Uncertainty",
    "Weighted",
    "__version__",
    "as_multitask",
    "evaluate",
    "make_hetero",
    "make_objective",
    "make_phase",
    "mlp",
    "predict",
    "regression_tasks",
    "split",
    "summarize",
]
