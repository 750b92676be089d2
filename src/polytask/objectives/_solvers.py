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
  semismooth Newton (primal-dual active-set) method on its complementarity conditions.
- :func:`gradvac_solve`: GradVac's pairwise adjustments on the Gramian, every task's sequence
  of partners processed side by side (``O(T^3)`` in all).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
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
    max_iter: int = 8,
    tol: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """Solve CAGrad's dual over the simplex in Gramian terms.

    ``min_{w >= 0, sum w = 1} b^T w + r sqrt(w^T G w)`` with ``b = G 1 / T`` (the task
    gradients' products with the mean gradient ``g0``) and ``r = c |g0|``,
    ``|g0|^2 = 1^T G 1 / T^2`` (Liu et al. 2021, eq. 7 and its dual). ``G`` should be
    normalised (torchjd divides it by its trace).

    The objective is positively homogeneous, so with ``y = r w / |g_w|`` its optimality
    conditions read ``G y + b - nu 1 = z``, ``y, z >= 0``, ``y^T z = 0``, ``sqrt(y^T G y) = r``
    (and ``w = y / sum y``): a complementarity problem with a constant Hessian. With
    ``y = max(x, 0)`` and ``z = max(-x, 0)`` complementarity holds by construction, which
    leaves ``T`` piecewise-linear equations in ``(x, nu)`` and the norm condition, solved by a
    semismooth Newton (primal-dual active-set) method, the active set being ``x > 0``, on the
    Jacobi scaling ``D G D`` (``D = diag(G)^-1/2``, ``diag(G)`` floored at ``eps`` times its
    largest entry). An iteration linearises the ``T`` equations, whose solutions then form a
    line: one ``T``-square solve with two right-hand sides gives it as ``x - q + t p``,
    ``nu + t``. The norm condition is solved on that line exactly, a quadratic in ``t`` (its
    larger root: the one of positive ``sum y`` when the solve is exact), not linearised: where
    two task gradients nearly oppose (``G`` nearly singular on the active block) the line is
    nearly parallel to the norm's tangent plane, which it meets far out, often where every
    ``y`` is negative, and the linearised iteration stalls or diverges. A rank-deficient ``G``
    makes the active block singular: its diagonal gets the Levenberg-Marquardt ridge
    ``|residual|_inf + 1e-12`` (``1e-6`` in float32), which bounds the steps far from the
    solution and vanishes at it. An iteration is ~30 small ops on whole tensors.

    Two runs go side by side, as one batched solve: from ``start`` (a previous solution; its
    zeros are the first inactive set) or the centre of the simplex, and from the best single
    task ``argmin_i b_i + r sqrt(G_ii)``, a vertex (where the optimum often is when two
    gradients nearly oppose, and from where the active set grows to the optimum's). The Newton
    step gives ``nu`` outright (the equations are linear in it), so a start is only a ``w``. Of
    the two runs' last iterates, the one of lower dual objective is returned (ties: the
    first); converged means that its Frank-Wolfe gap ``grad^T w - min_i grad_i`` (an upper
    bound on ``F(w) - min F``) is ``<= tol (1 + |b|_inf + r)``.

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

    Two nearly opposing gradients, ``(1, 0)`` and ``(-2, 0.1)``: the optimum is the first task
    alone.

    >>> gram = torch.tensor([[1.0, -2.0], [-2.0, 4.01]], dtype=torch.float64)
    >>> w, converged = cagrad_solve(gram / gram.trace(), c=0.4)
    >>> [round(float(x), 6) for x in w], bool(converged)
    ([1.0, 0.0], True)
    """
    dtype = solver_dtype(gram.dtype)
    g = gram.detach().to(dtype)
    n, device = g.shape[0], g.device
    tol = default_tol(dtype, tol)
    tiny = torch.finfo(dtype).tiny
    centre = torch.full((n,), 1.0 / n, dtype=dtype, device=device)
    if c == 0:  # the weights are 1 / T whatever w is
        return centre, torch.ones((), dtype=torch.bool, device=device)
    b = g.mean(1)
    r = c * b.mean().clamp_min(0).sqrt()
    diagonal = g.diagonal()
    # (a zero task gradient: its scale floored at eps times the largest, not at tiny, where
    # its entries of x and w overflow)
    d = torch.maximum(diagonal, diagonal.amax() * torch.finfo(dtype).eps).clamp_min(tiny).rsqrt()
    # each run's state v = (x, nu), y = D max(x, 0), and the iteration's matrices on its T + 1
    # entries (entry T: nu; D G D padded with zeros leaves it out of the quadratic forms)
    eye, fixed, ridge_on, lo = _cagrad_constants(n, dtype, device)
    gs = F.pad(d[:, None] * g * d, (0, 1, 0, 1))  # [[D G D, 0], [0, 0]]
    # the residual F(v) = max(v, lo) shift + v + offset: D G y - d nu + d b + min(x, 0), 0
    shift = torch.addr(gs - eye, eye[n], F.pad(-d, (0, 1)))
    offset = F.pad(d * b, (0, 1))
    # the Jacobian's active columns: D G D with the ridge's floor (a rank-deficient G) on its
    # diagonal, and e_T for nu, whose change t is not solved for: against the right-hand side
    # (d, 1) the solve gives the line's direction p, whose entry for nu is 1
    active_columns = gs + fixed
    direction = F.pad(d, (0, 1), value=1.0).expand(2, n + 1)

    w = centre
    if start is not None:
        w = start.to(g).clamp_min(0)
        total = w.sum()
        w = torch.where((total > 0) & (total < math.inf), w, centre)  # NaN: centre too
    best_task = torch.argmin(b + r * diagonal.clamp_min(0).sqrt())  # F(e_i), the vertices'
    vertex = (torch.arange(n, device=device) == best_task).to(dtype)
    starts = torch.stack((w, vertex))
    # y = r w / |g_w| on the scaling; nu = 0: the first step sets it
    x = starts * (r / d) / ((starts @ g) * starts).sum(1, keepdim=True).clamp_min(tiny).sqrt()
    v = F.pad(x, (0, 1))
    r2 = r * r
    for _ in range(max_iter):
        ya = v.clamp(min=lo)  # (y, nu)
        f = torch.addmm(v + offset, ya, shift)
        # the Jacobian: the columns of D G D (the ridge |F| on their diagonal) for the active
        # entries, those of I for the others (nu's entry is always "active")
        active = (v > lo).unsqueeze(1)
        ridge = torch.linalg.vector_norm(f, math.inf, 1, keepdim=True).unsqueeze(2)
        jacobian = torch.where(active, torch.addcmul(active_columns, ridge, ridge_on), eye)
        p, q = torch.linalg.solve_ex(jacobian, torch.stack((direction, f), 2)).result.unbind(2)
        # on the line v - q + t p, the norm condition on the active entries is
        # |base + t p|^2 = a t^2 + 2 ap t + yy = r^2: its larger root, without cancellation
        base = v - q
        line = torch.stack((p, base), 1) * active
        a, ap, _, yy = torch.bmm(line @ gs, line.mT).view(2, 4, 1).unbind(1)
        excess = r2 - yy
        total = torch.addcmul(a * excess, ap, ap).clamp_min(0).sqrt() + ap.abs()
        v = torch.addcmul(base, torch.where(ap > 0, excess / total, total / a), p)
    w = v[:, :n].clamp_min(0) * d
    total = w.sum(1, keepdim=True)
    w = torch.where(total > 0, w / total, centre)  # 0: G 1 = 0, Pareto-stationary; NaN too
    gw = w @ g
    norm = (w * gw).sum(1, keepdim=True).clamp_min(tiny).sqrt()
    grad = torch.addcmul(b, r / norm, gw)
    converged = (grad * w).sum(1) - grad.amin(1) <= tol * (1 + b.abs().max() + r)
    # the run of lower dual objective (index_select: indexing by a tensor reads it on the host)
    pick = torch.nan_to_num(w @ b + r * norm[:, 0], nan=math.inf).argmin().view(1)
    return w.index_select(0, pick)[0], converged.index_select(0, pick)[0]


@functools.lru_cache(maxsize=32)
def _cagrad_constants(
    n: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The constants of :func:`cagrad_solve` on ``T + 1`` entries (made once per size: a few
    ops less per step): ``I``; the ridge's floor (``1e-12``, ``1e-6`` in float32) on the first
    ``T`` diagonal entries and 1 on nu's; ``I`` but on nu's entry (where the ridge goes); the
    lower bounds ``(0, ..., 0, -inf)`` of ``max(v, lo) = (y, nu)`` (read-only)."""
    eye = torch.eye(n + 1, dtype=dtype, device=device)
    ridge_on = eye.clone()
    ridge_on[n, n] = 0
    fixed = ridge_on * (1e-12 if dtype == torch.float64 else 1e-6)
    fixed[n, n] = 1
    lo = torch.zeros(n + 1, dtype=dtype, device=device)
    lo[n] = -math.inf
    return eye, fixed, ridge_on, lo


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
