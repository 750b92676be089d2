"""polytask: multi-task learning with deep networks on PyTorch.

Examples
--------
>>> import polytask
>>> sorted(polytask.OBJECTIVES)[:3]
['geometric', 'mean', 'mse']
"""

from .data import MultiTargetData, make_hetero, make_phase, split
from .evaluation import evaluate, predict, summarize
from .experiments import Store, SyntheticExperiment, replicate, write_comparison_report
from .models import ColumnHeads, MultiTaskModel, mlp
from .objectives import (
    OBJECTIVES,
    Consistency,
    GeometricMean,
    Hierarchical,
    Mean,
    Objective,
    Sum,
    Uncertainty,
    Weighted,
    make_objective,
)
from .tasks import Task, regression_tasks
from .training import Callback, History, NonFiniteLossError, Trainer

__version__ = "0.1.0"

__all__ = [
    "OBJECTIVES",
    "Callback",
    "ColumnHeads",
    "Consistency",
    "GeometricMean",
    "Hierarchical",
    "History",
    "Mean",
    "MultiTargetData",
    "MultiTaskModel",
    "NonFiniteLossError",
    "Objective",
    "Store",
    "Sum",
    "SyntheticExperiment",
    "Task",
    "Trainer",
    "Uncertainty",
    "Weighted",
    "__version__",
    "evaluate",
    "make_hetero",
    "make_objective",
    "make_phase",
    "mlp",
    "predict",
    "regression_tasks",
    "replicate",
    "split",
    "summarize",
    "write_comparison_report",
]
