"""UPGrad's projections onto the dual cone, one quadprog call per row.

torchjd's :class:`~torchjd.linalg.QuadprogProjector` solves, for each weight vector ``u``, the
dual problem ``min_v v^T G v`` subject to ``u <= v`` with quadprog, through qpsolvers and
``numpy.apply_along_axis``; those two layers cost about as much as the ``T`` solves themselves
(the weighting takes 0.6 times torchjd's time at T = 10 without them, 0.87 times at T = 40).
:class:`RowwiseQuadprogProjector` hands each problem to quadprog directly, in the form
qpsolvers gives it (``min 1/2 v^T G v - a^T v`` subject to ``C^T v >= b`` with ``a = -0``,
``C = I``, ``b = u``), after the same normalisation and regularisation of ``G``: its weights
are bit for bit torchjd's (a test compares them). A problem quadprog cannot solve raises a
ValueError naming it (torchjd raises qpsolvers' ProblemError for a Gramian that is not
positive definite).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchjd.linalg import PSDMatrix, QuadprogProjector

__all__ = ["RowwiseQuadprogProjector"]


class RowwiseQuadprogProjector(QuadprogProjector):
    """torchjd's quadprog projector without qpsolvers' and ``apply_along_axis``'s overhead.

    Takes ``norm_eps`` and ``reg_eps`` as :class:`~torchjd.linalg.QuadprogProjector` does,
    and needs the same packages (torchjd's ``quadprog-projector`` extra).

    Examples
    --------
    >>> import torch
    >>> from torchjd.linalg import QuadprogProjector
    >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    >>> G, U = J @ J.T, torch.eye(2)
    >>> torch.equal(RowwiseQuadprogProjector()(U, G), QuadprogProjector()(U, G))
    True
    """

    def __call__(self, U: Tensor, G: PSDMatrix) -> Tensor:
        # normalised by the trace and regularised as torchjd's normalize / regularize do
        trace = G.diagonal().sum()
        G = torch.where(trace < self.norm_eps, torch.zeros_like(G), G / trace)
        G = G + self.reg_eps * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        import quadprog  # the quadprog-projector extra, checked when the projector was built

        cost = G.detach().cpu().numpy().astype(np.float64)
        bounds = U.detach().cpu().numpy().astype(np.float64)
        m = cost.shape[0]
        # qpsolvers hands quadprog -q for q = 0: negative zeros, kept for the same bits
        linear, constraints = -np.zeros(m), np.eye(m)
        out = np.empty_like(bounds)
        for index in np.ndindex(bounds.shape[:-1]):
            try:
                out[index] = quadprog.solve_qp(cost, linear, constraints, bounds[index], 0)[0]
            except ValueError as error:  # quadprog's "no solution" or "not positive definite"
                raise ValueError(
                    f"UPGrad: quadprog could not project onto the dual cone of the {m} task "
                    f"gradients ({error}); the Gramian may hold non-finite or huge values"
                ) from error
        return torch.as_tensor(out, device=G.device, dtype=G.dtype)
