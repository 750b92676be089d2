"""Multi-task models: a shared trunk and one head per task."""

from ._mlp import init_linear, mlp
from ._multitask import ColumnHeads, MultiTaskModel

__all__ = ["ColumnHeads", "MultiTaskModel", "init_linear", "mlp"]
