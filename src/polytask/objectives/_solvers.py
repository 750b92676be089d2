"""Solvers of the solver-bound gradient methods, written in torch on the Gramian's device.

Nash-MTL, FairGrad, CAGrad and GradVac take their weights from a small optimisation problem on
the ``T x T`` Gramian ``G`` of the task gradients. The reference implementations (torchjd, the
papers' code) copy ``G`` to the host and call cvxpy or scipy every step. The solvers here run on
``G``'s own device and dtype (float32 at least), batched over the ``T x T`` problem, with a fixed
iteration cap and no data-dependent Python branch: a step never waits for the device (no
``.item()``, ``.cpu()``, ``.tolist()``, no ``if`` on a tensor). Each solver returns, with its
result, a 0-dim boolean tensor ``converged`` (the defining condition met within the documented
tolerance); when it is False the result is the best iterate found within the cap.

- :func:`fair_solve`: ``G w = w ** (-1 / alpha)`` on ``w > 0`` (FairGrad; ``alpha = 1`` is
  Nash-MTL's bargaining condition ``G w = 1 / w``), as the minimiser of the strictly convex
  ``0.5 w^T G w - sum_i h(w_i)`` with ``h' = w ** (-1 / alpha)``, by Newton's method.
- :func:`cagrad_solve`: CAGrad's dual ``min_{w in simplex} b^T w + r sqrt(w^T G w)``, by a
  primal-dual interior-point method (Mehrotra's predictor-corrector).
- :func:`gradvac_solve`: GradVac's pairwise adjustments on the Gramian, every task's sequence
  of partners processed side by side (``O(T^3)`` in all).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cagrad_solve", "fair_solve", "gradvac_solve", "solver_dtype"]

_STEPS = (1.0, 2.0, 4.0, 16.0, 0.5, 0.25, 0.125, 0.0625, 0.015625, 0.0)
"""The step lengths Newton's method tries at once (a line search done as one batched
evaluation; ties go to the first): below 1 to backtrack, above 1 to cross the barrier's far
region in a few steps (where Newton's step on ``-log u`` only doubles ``u``), 0 to keep the
iterate, so that the objective never increases."""


def solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a solver works in: the Gramian's, at least float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def default_tol(dtype: torch.dtype, tol: float) -> float:
    """``tol``, raised to what the dtype can resolve (64 ulps of 1)."""
    return max(tol, 64 * torch.finfo(dtype).eps)


class _Factor:
    """A Jacobi-scaled LU factor of a symmetric positive definite matrix, from
    ``lu_factor_ex``, which reports a failure in a tensor instead of raising (raising would wait
    for the device); a failed factor gives non-finite values, which the callers reject. (LU
    rather than Cholesky: on the benchmarks' busy 2-core CPU, LAPACK's Cholesky of a 10 x 10
    matrix took milliseconds, as it starts threads, where its LU takes microseconds.)"""

    def __init__(self, matrix: Tensor, scaled: bool = True) -> None:
        self.scale = None
        if scaled:
            scale = matrix.diagonal().clamp_min(torch.finfo(matrix.dtype).tiny).rsqrt()
            self.scale = scale[:, None]
            matrix = matrix * self.scale * scale
        self.lu, self.pivots, _ = torch.linalg.lu_factor_ex(matrix)

    def solve(self, rhs: Tensor) -> Tensor:
        """``matrix^-1 rhs`` for a vector or the columns of a matrix."""
        column = rhs if rhs.dim() == 2 else rhs[:, None]
        if self.scale is not None:
            column = column * self.scale
        out = torch.linalg.lu_solve(self.lu, self.pivots, column)
        if self.scale is not None:
            out = out * self.scale
        return out if rhs.dim() == 2 else out[:, 0]


def fair_solve(
    gram: Tensor,
    power: float = 1.0,
    start: Tensor | None = None,
    max_iter: int = 10,
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve ``G w = w ** -power`` for ``w > 0``.

    ``power = 1 / alpha`` gives FairGrad's weights; ``power = 1`` is Nash-MTL's bargaining
    condition ``G w = 1 / w``. The solution minimises the strictly convex
    ``f(w) = 0.5 w^T G w - sum_i h(w_i)`` with ``h'(w) = w ** -power``; it exists when no
    non-zero ``d >= 0`` has ``G d = 0`` (no task gradient is zero and 0 is not a non-negative
    combination of them).

    The problem is solved on the scale of each task's gradient: with ``D = diag(G) ** -1/2``
    and ``w = D u``, the condition reads ``(D G D u)_i = c_i u_i ** -power`` for
    ``c = diag(D) ** (1 - power)`` (1 for Nash-MTL: its solution is invariant under this
    scaling), where ``D G D`` has a unit diagonal, however different the gradients' norms.
    Newton's method on ``0.5 u^T D G D u - sum_i c_i h(u_i)`` (its Hessian scaled to
    ``sigma (D G D) sigma + power I`` by ``sigma = sqrt(u ** (power + 1) / c)``) starts from
    ``start`` (the ``u`` of a previous solve, e.g. the last step's, held within a factor 1000
    of the cold start) or the solution for orthogonal gradients
    (``u_i = c_i ** (1 / (1 + power))``), first rescaled to the best multiple along its ray.
    Each iteration tries the steps ``1, 2, 4, 16, 1/2, ..., 1/64, 0`` along the Newton
    direction at once and keeps the one of lowest objective that stays positive, so the
    objective never increases and the last iterate is the best so far. Converged means
    ``max_i |(G w)_i w_i ** power - 1| <= tol`` (a relative residual) at the end.

    Parameters
    ----------
    gram
        The ``(T, T)`` Gramian.
    power
        The exponent (``1 / alpha``), positive.
    start
        The ``u`` of a previous solve (the second value returned), or None.
    max_iter
        The iteration cap.
    tol
        The tolerance on the relative residual (raised to 64 ulps of the dtype).

    Returns
    -------
    tuple of Tensor
        ``w`` (shape ``(T,)``), ``u`` (the next ``start``) and the 0-dim boolean
        ``converged``.

    Examples
    --------
    >>> import torch
    >>> gram = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> w, _, converged = fair_solve(gram)
    >>> torch.allclose(gram @ w, 1 / w), bool(converged)
    (True, True)
    """
    dtype = solver_dtype(gram.dtype)
    g = gram.detach().to(dtype)
    n = g.shape[0]
    tol = default_tol(dtype, tol)
    tiny = torch.finfo(dtype).tiny
    d = g.diagonal().clamp_min(tiny).rsqrt()
    original, g = g, d[:, None] * g * d[None, :]
    c = torch.ones_like(d) if power == 1 else d.pow(1 - power)
    steps = torch.tensor(_STEPS, dtype=dtype, device=g.device)
    lower = -1 + 1e-12 if dtype == torch.float64 else -1 + 1e-6
    shift = power * torch.eye(n, dtype=dtype, device=g.device)

    cold = c.pow(1 / (1 + power))  # the solution were the gradients orthogonal

    def scaled(v: Tensor) -> Tensor:
        # the best multiple k v: k^(1 + power) = sum_i c_i v_i^(1 - power) / v^T G v
        curvature = (v @ g @ v).clamp_min(tiny)
        return v * (((c * v.pow(1 - power)).sum() / curvature) ** (1 / (1 + power)))

    u = scaled(cold)
    if start is not None:
        # a start far off (an unconverged last step's) is held within 1000x of the cold one,
        # and taken only where it is closer to the solution than the cold start: a warm start
        # from a very different Gramian can lie where Newton's steps are short
        v = start.to(g)
        v = torch.where(v.isfinite() & (v > 0), v, cold).clamp(cold * 1e-3, cold * 1e3)
        warm = scaled(v)

        def residual(x: Tensor) -> Tensor:
            return ((g @ x) * x.pow(power) / c - 1).abs().max()

        u = torch.where(residual(warm) <= residual(u), warm, u)
    for _ in range(max_iter):
        gu = g @ u
        # Newton's system (G + power diag(c u^(-power-1))) d = c u^-power - G u, scaled by
        # sigma = sqrt(u^(power + 1) / c) on both sides: (sigma G sigma + power I) y = ...
        sigma = u if power == 1 else (u.pow(power + 1) / c).sqrt()
        factor = _Factor(sigma[:, None] * g * sigma[None, :] + shift, scaled=False)
        direction = sigma * factor.solve(sigma * (c * u.pow(-power) - gu))
        # the objective's change for every step length t at once: the quadratic part from two
        # products; the barrier's, with r = t d / u, is sum c log1p(r) (power 1) or
        # sum c u^(1 - power) expm1((1 - power) log1p(r)) / (1 - power). (log1p and expm1
        # rather than log and pow: accurate for small steps, and torch runs them on one thread
        # up to a few thousand elements, where log and pow start threads from 128.)
        ratio = steps[:, None] * (direction / u)
        growth = torch.log1p(ratio.clamp_min(lower))
        if power == 1:
            barrier = growth.sum(1)
        else:
            barrier = (c * u.pow(1 - power) * torch.expm1((1 - power) * growth)).sum(1)
            barrier = barrier / (1 - power)
        slope, bend = direction @ gu, direction @ g @ direction
        change = steps * slope + 0.5 * steps * steps * bend - barrier
        change = torch.where((ratio > lower).all(1) & change.isfinite(), change, math.inf)
        # index_select, not steps[i]: indexing by a 0-dim tensor reads it on the host
        new = u + steps.index_select(0, change.argmin().view(1)) * direction
        u = torch.where(new.isfinite().all() & (new > 0).all(), new, u)
    w = d * u
    residual = ((original @ w) * w.pow(power) - 1).abs().max()
    return w, u, residual <= tol


def cagrad_solve(
    gram: Tensor,
    c: float,
    start: Tensor | None = None,
    max_iter: int = 14,
    tol: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """Solve CAGrad's dual over the simplex in Gramian terms.

    ``min_{w >= 0, sum w = 1} b^T w + r sqrt(w^T G w)`` with ``b = G 1 / T`` (the task
    gradients' products with the mean gradient ``g0``) and ``r = c |g0|``,
    ``|g0|^2 = 1^T G 1 / T^2`` (Liu et al. 2021, eq. 7 and its dual). ``G`` should be
    normalised (torchjd divides it by its trace).

    A primal-dual interior-point method with Mehrotra's predictor-corrector: per iteration one
    LU factor of ``H + W^-1 Z`` (``H`` the Hessian of the objective, ``W``, ``Z`` the
    primal variables and their bound multipliers) and two solves (three right-hand sides), the
    equality ``sum w = 1`` eliminated through a Schur complement; primal and dual take the same
    step, 99% of the way to the boundary at most. The square root is smoothed by ``1e-14``
    inside (``1e-10`` in float32). ``start`` (a previous solution) is pulled halfway to the
    centre of the simplex before use. The iterate of smallest KKT residual (the dual residual's
    largest entry plus the primal residual plus the mean complementarity ``w^T z / T``,
    relative to ``1 + |b|_inf + r``) is returned; converged means that residual ``<= tol``.

    Returns
    -------
    tuple of Tensor
        ``w`` on the simplex (shape ``(T,)``) and the 0-dim boolean ``converged``.

    Examples
    --------
    >>> import torch
    >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
    >>> w, converged = cagrad_solve(gram / 2, c=0.4)
    >>> [round(float(x), 6) for x in w], bool(converged)
    ([0.5, 0.5], True)
    """
    dtype = solver_dtype(gram.dtype)
    g = gram.detach().to(dtype)
    n = g.shape[0]
    tol = default_tol(dtype, tol)
    ones = torch.ones(n, dtype=dtype, device=g.device)
    b = g @ ones / n
    r = c * (ones @ b / n).clamp_min(0).sqrt()
    smooth = 1e-14 if dtype == torch.float64 else 1e-10
    norm = 1 + b.abs().max() + r

    if start is None:
        w = ones / n
    else:
        w = 0.5 * start.to(g).clamp_min(0) + 0.5 / n
        w = torch.where(w.isfinite().all(), w / w.sum(), ones / n)

    gw = g @ w
    s = (w @ gw + smooth).sqrt()
    ratio = r / s
    grad = b + ratio * gw
    # start the multipliers where the dual residual is smallest for a central point
    nu = grad.min() - (norm - 1)  # z = grad - nu: central, on the problem's scale
    state = torch.stack([w, grad - nu])  # the rows: w and z
    best_w, best_res = w, torch.full((), math.inf, dtype=dtype, device=g.device)
    for k in range(max_iter + 1):
        w, z = state
        if k:
            gw = g @ w
            s = (w @ gw + smooth).sqrt()
            ratio = r / s
            grad = b + ratio * gw
        rd = grad - z - nu
        rp = w.sum() - 1
        wz = w * z
        mu = wz.mean()
        res = rd.abs().max() + rp.abs() + mu  # relative to norm at the end
        best_w = torch.where(res < best_res, w, best_w)
        best_res = torch.minimum(res, best_res)
        if k == max_iter:
            break
        # the Hessian of r sqrt(w^T G w), plus Z / W: the matrix of Newton's reduced system
        kkt = ratio * g - torch.outer(gw, gw * (ratio / (s * s)))
        kkt.diagonal().add_(z / w)
        state, nu = _interior_step(kkt, state, nu, rd, rp, wz, mu, ones)
    best_w = best_w.clamp_min(0)
    return best_w / best_w.sum(), best_res <= tol * norm


def _interior_step(
    kkt: Tensor,
    state: Tensor,
    nu: Tensor,
    rd: Tensor,
    rp: Tensor,
    wz: Tensor,
    mu: Tensor,
    ones: Tensor,
) -> tuple[Tensor, Tensor]:
    """One Mehrotra predictor-corrector step for ``min f(w)`` s.t. ``w >= 0``, ``sum w = 1``
    (``kkt``: the Hessian of ``f`` plus ``Z / W``; ``state``: the rows ``w`` and ``z``, the
    bounds' multipliers): the new ``state`` and ``nu`` (the equality's multiplier); the old
    ones where the step is not finite."""
    w, z = state
    factor = _Factor(kkt)
    # H dw - dz - dnu 1 = -rd;  sum dw = -rp;  z dw + w dz = rc. With dz eliminated,
    # (H + Z/W) dw = q + dnu 1 for q = -rd + rc / w; dnu from sum dw = -rp. The predictor
    # (rc = -w z, so q = -rd - z) and the solve with 1 share one call.
    u, unit = factor.solve(torch.stack([-rd - z, ones], 1)).unbind(1)
    total = unit.sum()
    dw = u + ((-rp - u.sum()) / total) * unit
    move = torch.stack([dw, -z - z * dw / w])
    step = _longest(state, move)
    mu_aff = (state + step * move).prod(0).mean()
    sigma = (mu_aff / mu).clamp(0, 1) ** 3
    rc = sigma * mu - wz - move.prod(0)
    u = factor.solve(rc / w - rd)
    dnu = (-rp - u.sum()) / total
    dw = u + dnu * unit
    move = torch.stack([dw, (rc - z * dw) / w])
    step = 0.99 * _longest(state, move)
    new, new_nu = state + step * move, nu + step * dnu
    ok = (new.sum() + new_nu).isfinite()
    return torch.where(ok, new, state), torch.where(ok, new_nu, nu)


def _longest(state: Tensor, move: Tensor) -> Tensor:
    """The longest step in ``[0, 1]`` that keeps ``state + t move`` non-negative."""
    return torch.where(move < 0, state / -move, 1.0).amin().clamp(max=1.0)


def gradvac_solve(
    gram: Tensor, targets: Tensor, partners: Tensor, beta: float, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """GradVac's weights (Wang et al. 2021, as in LibMTL and torchjd) on the Gramian.

    For each task ``i`` and its partners ``j = partners[i, 0], partners[i, 1], ...`` in that
    order, the cosine ``phi`` between ``i``'s adjusted gradient and ``g_j`` is compared with
    the EMA target ``targets[i, j]``; below it, ``g_j`` times the closed-form amount is added to
    ``i``'s gradient; then ``targets[i, j] <- (1 - beta) targets[i, j] + beta phi``. The tasks
    do not interact, so step ``k`` handles every task's ``k``-th partner at once. The adjusted
    gradient of ``i`` is kept as a row ``C[i]`` of coefficients on the original gradients, so
    every product comes from ``C G`` and ``C G C^T``: ``T - 1`` batched steps, ``O(T^3)``.

    Parameters
    ----------
    gram
        The ``(T, T)`` Gramian.
    targets
        The ``(T, T)`` EMA targets ``phi_hat`` (not modified).
    partners
        ``(T, T - 1)`` long: row ``i`` is the order in which task ``i`` visits the others.
    beta
        The EMA rate.
    eps
        Added to the denominators.

    Returns
    -------
    tuple of Tensor
        The weights ``C.sum(0)`` (shape ``(T,)``) and the updated targets.

    Examples
    --------
    >>> import torch
    >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
    >>> w, targets = gradvac_solve(gram, torch.zeros(2, 2), torch.tensor([[1], [0]]), 0.5)
    >>> [round(float(x), 4) for x in w], [round(float(x), 4) for x in targets[0]]
    ([1.5, 1.5], [0.0, -0.25])
    """
    g = gram.detach()
    n = g.shape[0]
    coefficients = torch.eye(n, dtype=g.dtype, device=g.device)
    products = g.clone()  # C G: row i holds g_i^PC . g_j for every j
    targets = targets.detach().to(g).clone()
    norms = g.diagonal().clamp_min(0).sqrt()
    for k in range(n - 1):
        j = partners[:, k : k + 1]
        dot = products.gather(1, j)[:, 0]
        norm_i = (products * coefficients).sum(1).clamp_min(0).sqrt()
        norm_j = norms[j[:, 0]]
        phi = dot / (norm_i * norm_j + eps)
        hat = targets.gather(1, j)[:, 0]
        root_phi = (1 - phi * phi).clamp_min(0).sqrt()
        root_hat = (1 - hat * hat).clamp_min(0).sqrt()
        amount = norm_i * (hat * root_phi - phi * root_hat) / (norm_j * root_hat + eps)
        amount = torch.where(phi < hat, amount, 0.0)
        coefficients.scatter_add_(1, j, amount[:, None])
        products = products + amount[:, None] * g[j[:, 0]]
        targets.scatter_(1, j, ((1 - beta) * hat + beta * phi)[:, None])
    return coefficients.sum(0), targets
