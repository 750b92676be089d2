"""The fit loop, its history, its callbacks and monitors."""

from ._callbacks import Callback
from ._history import History
from ._monitor import GradientMonitor, TaskMetricProbe, parameter_groups
from ._trainer import FitState, NonFiniteLossError, Trainer

__all__ = [
    "Callback",
    "FitState",
    "GradientMonitor",
    "History",
    "NonFiniteLossError",
    "TaskMetricProbe",
    "Trainer",
    "parameter_groups",
]
