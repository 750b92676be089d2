"""Multi-task models: a shared trunk and one head per task, and the protocol any model meets."""

from ._mlp import init_linear, mlp
from ._multitask import ColumnHeads, MultiTaskModel
from ._protocol import MultiTaskModule, UserModel, as_multitask, has_representation, splits_per_task
from ._sparse import SparseLinear

__all__ = [
    "ColumnHeads",
    "MultiTaskModel",
    "MultiTaskModule",
    "SparseLinear",
    "UserModel",
    "as_multitask",
    "has_representation",
    "init_linear",
    "mlp",
    "splits_per_task",
]
