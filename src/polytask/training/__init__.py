"""The fit loop, its history and its callbacks."""

from ._callbacks import Callback
from ._history import History
from ._trainer import FitState, NonFiniteLossError, Trainer

__all__ = ["Callback", "FitState", "History", "NonFiniteLossError", "Trainer"]
