"""Per-task leaves of a shared representation: the one data structure that models, the
gradient engine and structured terms all read."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


class TaskFeatures(dict):
    """Task name -> its own leaf copy of the shared features ``z`` (no data is copied).

    The heads read the leaves, so the gradient of the summed losses lands separately on each
    leaf: every task's ``dL_t/dz`` from one backward pass. ``z`` keeps the trunk's graph.

    Examples
    --------
    >>> import torch
    >>> z = torch.ones(2, 3, requires_grad=True) * 2
    >>> leaves = TaskFeatures(z, ["a", "b"])
    >>> leaves["a"].is_leaf, leaves["a"].requires_grad, leaves.z is z
    (True, True, True)
    """

    def __init__(self, z: Tensor, names: Sequence[str]) -> None:
        super().__init__({name: z.detach().requires_grad_() for name in names})
        self.z = z
