"""Multi-task models: a shared trunk and one head per task, and the protocol any model meets."""

from ._cross_stitch import CrossStitch
from ._experts import BatchedExperts, ExpertList
from ._gated import CGC, PLE, DSelectGate, DSelectK, MMoE, SharedBottom
from ._mlp import init_linear, mlp
from ._multitask import ColumnHeads, MultiTaskModel
from ._protocol import MultiTaskModule, UserModel, as_multitask, has_representation, splits_per_task
from ._sparse import SparseLinear

__all__ = [
    "CGC",
    "PLE",
    "BatchedExperts",
    "ColumnHeads",
    "CrossStitch",
    "DSelectGate",
    "DSelectK",
    "ExpertList",
    "MMoE",
    "MultiTaskModel",
    "MultiTaskModule",
    "SharedBottom",
    "SparseLinear",
    "UserModel",
    "as_multitask",
    "has_representation",
    "init_linear",
    "mlp",
    "splits_per_task",
]
