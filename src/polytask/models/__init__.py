"""Multi-task models: a shared trunk and one head per task."""

from ._mlp import init_linear, mlp
from ._multitask import ColumnHeads, MultiTaskModel
from ._sparse import SparseLinear

__all__ = ["ColumnHeads", "MultiTaskModel", "SparseLinear", "init_linear", "mlp"]
