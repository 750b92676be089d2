"""The fit loop, its history, its callbacks and monitors."""

from ._callbacks import BestWeights, Callback, Checkpoint, EarlyStopping, NonFiniteCheck
from ._distributed import is_main_process
from ._history import History
from ._monitor import GradientMonitor, TaskMetricProbe, parameter_groups
from ._trainer import FitState, NonFiniteLossError, Trainer

__all__ = [
    "BestWeights",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "FitState",
    "GradientMonitor",
    "History",
    "NonFiniteCheck",
    "NonFiniteLossError",
    "TaskMetricProbe",
    "Trainer",
    "is_main_process",
    "parameter_groups",
]

from ._gates import GateMonitor

__all__ += ["GateMonitor"]
