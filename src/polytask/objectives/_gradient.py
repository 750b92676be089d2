"""Gradient-level methods: an update from the task gradients, never from the model.

Most gradient methods of the MTL literature depend on the task gradients only through their
Gramian ``G = J J^T`` (T x T), as torchjd's ``Weighting`` classes make explicit: the update is
``sum_t w_t g_t`` with ``w = weighting(G)``. A method here is that function and nothing more.
It reads the gradients through a :class:`~polytask.objectives.TaskGradients` view that the
gradient engine (:class:`polytask.GradientEngine`) builds for one step on one of three paths:

- ``"exact"``: the Gramian of the Jacobian of the losses on the shared parameters;
- ``"representation"`` (MGDA-UB, Sener and Koltun 2018): the Gramian of the gradients with
  respect to the shared features ``z``, an upper bound that costs about one extra pass
  through the heads;
- ``"naive"``: one ``autograd.grad`` per task, the reference the tests compare with.

How those are computed (batched pull-backs, per-task feature leaves, head ownership) is the
engine's business; a method only says which path it wants by default.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn
from torchjd import aggregation

from .._checks import as_int
from .._features import TaskFeatures
from ._base import Objective, Positions, Step, TaskGradients
from ._dual_cone import RowwiseQuadprogProjector
from ._loss_level import check_option
from ._solvers import cagrad_solve, fair_solve, gradvac_solve, solver_dtype
from ._streams import RandomStream, stream_seed

Path = Literal["exact", "representation", "naive"]
PATHS: tuple[str, ...] = ("exact", "representation", "naive")
Solver = Literal["torch", "reference"]
SOLVERS: tuple[str, ...] = ("torch", "reference")

__all__ = ["PATHS", "GradientObjective", "TaskFeatures"]


class GradientObjective(Objective):
    """Base of the gradient methods: ``weights = weighting(G)``, then the update
    ``sum_t w_t * grad L_t``.

    Parameters
    ----------
    path
        ``"exact"`` (default), ``"representation"`` (MGDA-UB's cheap bound) or ``"naive"``.
        The engine runs the method on that path; a path that has no meaning for the model or
        the data raises there, before the first step.
    """

    default_path: Path = "exact"
    paths: tuple[str, ...] = PATHS
    """The paths the method can run on."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path or self.default_path

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, path: str) -> None:
        if path not in self.paths:
            raise ValueError(
                f"{type(self).__name__}: path must be one of {self.paths}, got {path!r}"
            )
        self._path = path

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor] | None:
        """The torchjd ``Weighting`` (Gramian -> weights) of the method; None for methods
        that build their update otherwise (GradNorm, DB-MTL)."""
        return None

    def _on_bind(self) -> None:
        self.weighting = self.make_weighting(len(self.task_names))

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        """The task weights from the ``(k, k)`` Gramian of the present tasks' gradients."""
        return self.weighting(gram)

    def values(self, losses: Tensor) -> Tensor:
        """What the engine takes the gradients of: the losses themselves (DB-MTL: their
        logarithms)."""
        return losses

    def diagnostics(self) -> dict[str, Tensor]:
        """Counters of the fit so far, as 0-dim tensors on the method's device (reading them is
        the caller's host synchronisation, e.g. once per epoch): ``solver_unconverged`` (the
        steps whose solve missed its tolerance since the fit began) for the methods with an
        iterative solver (Nash-MTL, CAGrad, FairGrad). None here.

        Examples
        --------
        >>> import torch
        >>> method = NashMTL()
        >>> method.bind(["a", "b"])
        >>> _ = method.weights_from_gramian(torch.eye(2))
        >>> {name: int(count) for name, count in method.diagnostics().items()}
        {'solver_unconverged': 0}
        """
        return {}

    def step(self, losses: Tensor, positions: Positions, grads: TaskGradients) -> Step:
        """One update: weights from the Gramian, then ``sum_t w_t grad L_t`` into ``.grad``.

        ``losses`` holds the present tasks' losses (``positions`` says which); ``grads`` is the
        engine's view of their gradients on the step's path."""
        weights = self.weights_from_gramian(grads.gramian()).to(losses.dtype).detach()
        loss_weights = self.loss_weights(weights)
        if loss_weights is weights:
            grads.apply(weights)
        else:
            loss_weights = loss_weights.to(losses.dtype).detach()
            grads.apply(weights, heads=loss_weights)
        return Step((loss_weights * losses.detach()).sum(), self._scatter(loss_weights, positions))

    def loss_weights(self, weights: Tensor) -> Tensor:
        """The weights of the losses themselves (the heads' gradients and the step's value)
        when they differ from the shared update's ``weights`` (Nash-MTL: unclipped)."""
        return weights

    def _every_task(self, losses: Tensor | Mapping[str, Tensor], positions: Positions) -> Tensor:
        """The stacked losses, for methods whose per-task state needs every task every step."""
        if positions is not None and len(positions) != len(self.task_names):
            raise ValueError(
                f"{type(self).__name__} needs every task in every step (round_robin schedule, "
                "no missing labels)"
            )
        return self.stack(losses)

    def _options(self) -> dict[str, object]:
        """The hyperparameters ``repr`` shows."""
        return dict(getattr(self, "options", {}))

    def extra_repr(self) -> str:
        parts = [f"path={self.path!r}"] + [f"{k}={v!r}" for k, v in self._options().items()]
        if self.task_names:
            parts.append(super().extra_repr())
        return ", ".join(parts)


class _Weighted(GradientObjective):
    """A gradient method defined by one torchjd Gramian weighting.

    Its ``options`` go to the torchjd weighting, which checks their range when the method is
    bound; a number among them must be finite (torchjd lets NaN through), and so must a tensor
    (a preference vector), which is checked here, at construction.
    """

    factory: Callable[..., Callable[[Tensor], Tensor]]

    def __init__(self, path: Path | None = None, **options: float) -> None:
        super().__init__(path)
        method = type(self).__name__
        for name, value in options.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                check_option(method, name, value, low=None)
            elif isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{method}: {name} must be finite, got {value}")
        self.options = options

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor]:
        return type(self).factory(**self.options)


class MGDA(_Weighted):
    """MGDA (Désidéri 2012; Sener and Koltun, NeurIPS 2018, "Multi-Task Learning as
    Multi-Objective Optimization"): the minimum-norm point of the convex hull of the task
    gradients (torchjd's ``MGDAWeighting``). With ``path="representation"`` this is MGDA-UB."""

    factory = aggregation.MGDAWeighting


def shuffle_seed(seed: int) -> int:
    """The seed of a shuffling method's generator, derived from the fit's seed so that its
    stream is not the one dropout draws from."""
    return stream_seed(seed, RandomStream.stream_key)


class _Shuffling(RandomStream, _Weighted):
    """A torchjd weighting that shuffles the task order with ``torch.randperm`` on the global
    RNG (torchjd takes no generator). Here the shuffles draw from the method's own generator
    (:class:`~polytask.objectives._streams.RandomStream`): seeded once per fit from the
    Trainer's ``seed`` (in a loop of your own, from the last ``torch.manual_seed``), lent to
    torchjd for the call; the global RNG is neither read nor advanced by a step, so the method
    does not shift the dropout masks (or any other draw) of the fit, and the processes of a
    data-parallel fit shuffle alike.

    The same seed therefore gives the same shuffles, and the same updates, whatever state the
    caller's RNG is in.
    """

    def _on_bind(self) -> None:
        super()._on_bind()
        self.reset_stream()  # fresh stream for every fit

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        return self.lend(self.weighting, gram)  # torchjd draws from the global generator


class _Solved:
    """Mixin of the methods whose weights come from an iterative solver (Nash-MTL, CAGrad,
    FairGrad, GradVac).

    ``solver="torch"`` (default) runs the solvers of :mod:`polytask.objectives._solvers` on the
    Gramian's device and dtype (float32 at least), with an iteration cap, warm-started from the
    previous step's solution and never waiting for the device: no host synchronisation in a
    step. ``solver="reference"`` calls torchjd's implementation (cvxpy / scipy, on the host), the
    oracle of the tests. A solve that does not meet its tolerance within the cap gives the best
    iterate it found and adds one to the ``solver_unconverged`` counter of
    :meth:`~GradientObjective.diagnostics`.

    The warm starts and any per-task state are kept for all bound tasks and indexed by the
    step's positions, so steps over changing subsets of the tasks keep each task's own state.
    """

    solver: str
    _index: Callable[..., Tensor]
    gramian_only_step = True
    """Its ``step`` only notes the positions around the Gramian-only step: the weights read no
    loss value (a data-parallel step need not all-reduce the losses)."""

    def _init_solver(self, solver: str) -> None:
        if solver not in SOLVERS:
            raise ValueError(
                f"{type(self).__name__}: solver must be one of {SOLVERS}, got {solver!r}"
            )
        self.solver = solver

    def _on_bind(self) -> None:
        super()._on_bind()  # type: ignore[misc]
        self._positions: Positions = None
        self._state: dict[str, Tensor] = {}
        self._unconverged: Tensor | None = None
        self._calls = 0

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor] | None:
        if self.solver == "reference":
            return super().make_weighting(n_tasks)  # type: ignore[misc]
        return None

    def step(self, losses: Tensor, positions: Positions, grads: TaskGradients) -> Step:
        self._positions = positions
        try:
            return super().step(losses, positions, grads)  # type: ignore[misc]
        finally:
            self._positions = None

    def _options(self) -> dict[str, object]:
        options = super()._options()  # type: ignore[misc]
        if self.solver != "torch":
            options["solver"] = self.solver
        return options

    def diagnostics(self) -> dict[str, Tensor]:
        count = self._unconverged
        if count is None:
            count = torch.zeros((), dtype=torch.long)
        return {"solver_unconverged": count}

    def _count(self, converged: Tensor) -> None:
        """Count a solve that missed its tolerance (on the device, no synchronisation)."""
        if self._unconverged is None or self._unconverged.device != converged.device:
            self._unconverged = torch.zeros((), dtype=torch.long, device=converged.device)
        self._unconverged += (~converged).long()

    def _read(self, key: str, gram: Tensor, fill: float, square: bool = False) -> Tensor:
        """The present tasks' part of a per-task state (created, filled, on first use)."""
        n = len(self.task_names)
        full = self._state.get(key)
        if full is None or full.device != gram.device or full.dtype != gram.dtype:
            shape = (n, n) if square else (n,)
            full = self._state[key] = torch.full(shape, fill, dtype=gram.dtype, device=gram.device)
        if self._positions is None or len(self._positions) == n:
            return full
        index = self._index(self._positions, gram.device)
        part = full.index_select(0, index)
        return part.index_select(1, index) if square else part

    def _write(self, key: str, value: Tensor) -> None:
        full = self._state[key]
        value = value.detach().to(full.dtype)
        if self._positions is None or len(self._positions) == len(self.task_names):
            full.copy_(value)
            return
        index = self._index(self._positions, full.device)
        if full.dim() == 2:
            full[index[:, None], index[None, :]] = value
        else:
            full.index_copy_(0, index, value)


class PCGrad(_Shuffling):
    """PCGrad (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning"): each task
    gradient projected onto the normal plane of the gradients it conflicts with, in a random
    order, then summed (torchjd's ``PCGradWeighting``). The random order draws from the
    method's own generator, seeded by the fit (see :class:`_Shuffling`), never from the global
    RNG."""

    factory = aggregation.PCGradWeighting


class GradVac(_Solved, _Shuffling):
    """GradVac (Wang et al., ICLR 2021, "Gradient Vaccine"): like PCGrad, but aligns pairs of
    gradients towards an EMA of their cosine similarity, as in LibMTL and torchjd's
    ``GradVacWeighting``. For each task, the other tasks are visited in a random order; when
    the cosine between the task's (adjusted) gradient and the other's is below its EMA target,
    the other's gradient is added in the closed-form amount that reaches the target; the target
    moves by ``beta`` towards the cosine seen.

    With ``solver="torch"`` (default) the adjustments run on the Gramian, every task's ``k``-th
    partner at once (:func:`~polytask.objectives._solvers.gradvac_solve`: ``T - 1`` batched
    steps, ``O(T^3)``, on the Gramian's device); the orders are the same ``torch.randperm``
    draws torchjd makes, so both solvers give the same weights. The random order of the pairs
    draws from the method's own generator, seeded by the fit (see :class:`_Shuffling`), never
    from the global RNG. The EMA targets are kept for every pair of bound tasks.

    Parameters
    ----------
    path
        The gradient path (``"exact"`` by default).
    beta
        The EMA rate of the cosine targets (0.5, LibMTL's default).
    solver
        ``"torch"`` or ``"reference"`` (torchjd).

    Examples
    --------
    >>> import torch
    >>> method = GradVac()
    >>> method.bind(["a", "b"])
    >>> _ = torch.manual_seed(0)
    >>> method.weights_from_gramian(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
    tensor([1.5000, 1.5000])
    """

    eps = 1e-8

    def __init__(self, path: Path | None = None, beta: float = 0.5, solver: Solver = "torch"):
        if not 0 <= beta <= 1:
            raise ValueError(f"GradVac: beta must be in [0, 1], got {beta}")
        super().__init__(path, beta=beta)
        self._init_solver(solver)

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor] | None:
        if self.solver == "reference":
            return aggregation.GradVacWeighting(beta=self.options["beta"], eps=self.eps)
        return None

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        if self.solver == "reference":
            return super().weights_from_gramian(gram)
        generator = self.stream()
        n = gram.shape[0]
        orders = torch.stack([torch.randperm(n - 1, generator=generator) for _ in range(n)])
        partners = orders + (orders >= torch.arange(n)[:, None])
        partners = partners.to(gram.device, non_blocking=True)
        g = gram.detach().to(solver_dtype(gram.dtype))
        targets = self._read("targets", g, 0.0, square=True)
        weights, targets = gradvac_solve(g, targets, partners, self.options["beta"], self.eps)
        self._write("targets", targets)
        return weights.to(gram.dtype)


class CAGrad(_Solved, _Weighted):
    """CAGrad (Liu et al., NeurIPS 2021, "Conflict-Averse Gradient Descent"): the update that
    maximises the worst task improvement within a ball of radius ``c |g0|`` around the average
    gradient ``g0`` (``c=0.4`` as in the paper).

    With ``G`` normalised by its trace (as torchjd does), the dual over the simplex,
    ``w* = argmin b^T w + c |g0| sqrt(w^T G w)`` with ``b = G 1 / T``, gives the weights
    ``1 / T + c |g0| w* / |g_w*|`` (zeros when ``|g_w*| < 1e-4``: the gradients are then
    nearly Pareto-stationary). ``solver="torch"`` (default) solves the dual's optimality
    conditions by a semismooth Newton (primal-dual active-set) method on the Gramian's device
    (:func:`~polytask.objectives._solvers.cagrad_solve`, :attr:`max_iter` iterations, relative
    Frank-Wolfe gap ``<= tol``, warm-started from the last step's ``w*``, whose zeros are its
    first inactive set); ``"reference"`` calls torchjd's ``CAGradWeighting`` (cvxpy with
    CLARABEL, on the host; needs the ``methods`` extra).

    Parameters
    ----------
    path
        The gradient path (``"exact"`` by default).
    c
        The radius of the ball, relative to ``|g0|`` (finite, non-negative).
    solver
        ``"torch"`` or ``"reference"``.

    Examples
    --------
    >>> import torch
    >>> method = CAGrad()
    >>> method.bind(["a", "b"])
    >>> method.weights_from_gramian(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
    tensor([0.7000, 0.7000])
    """

    factory = aggregation.CAGradWeighting
    max_iter = 8  # the slowest solves of the tests (opposing pairs, far-off starts) need 7
    """The iteration count of the Newton method (always run: stopping early would read the
    device; from a near start, the last step's, it converges in 1 to 3)."""
    tol = 1e-8
    """The tolerance on its relative Frank-Wolfe gap (raised to 64 ulps of float32 there)."""
    norm_eps = 1e-4
    """torchjd's threshold: the trace below which ``G`` counts as zero, and ``|g_w*|`` below
    which the weights are zeros."""

    def __init__(self, path: Path | None = None, c: float = 0.4, solver: Solver = "torch"):
        check_option("CAGrad", "c", c)
        super().__init__(path, c=c)
        self._init_solver(solver)

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        if self.solver == "reference":
            return super().weights_from_gramian(gram)
        g = gram.detach().to(solver_dtype(gram.dtype))
        n = g.shape[0]
        trace = g.diagonal().sum()
        g = torch.where(trace < self.norm_eps, torch.zeros_like(g), g / trace)
        start = self._read("start", g, 1.0 / len(self.task_names))
        w, converged = cagrad_solve(g, self.options["c"], start, self.max_iter, self.tol)
        self._write("start", w)
        self._count(converged)
        ones = torch.ones_like(w)
        radius = self.options["c"] * (ones @ g @ ones).clamp_min(0).sqrt() / n
        norm = (w @ g @ w).clamp_min(0).sqrt()
        weights = ones / n + radius / norm.clamp_min(self.norm_eps) * w
        return torch.where(norm >= self.norm_eps, weights, 0.0).to(gram.dtype)


class IMTL(_Weighted):
    """IMTL-G (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning"): the update whose
    projections on every task gradient's direction are equal (torchjd's ``IMTLGWeighting``)."""

    factory = aggregation.IMTLGWeighting


class AlignedMTL(_Weighted):
    """Aligned-MTL (Senushkin et al., CVPR 2023, "Independent Component Alignment for
    Multi-Task Learning"): the task gradients aligned by a condition-number-minimising linear
    map (torchjd's ``AlignedMTLWeighting``)."""

    factory = aggregation.AlignedMTLWeighting


class UPGrad(_Weighted):
    """UPGrad (Quinton and Rey, 2024, "Jacobian Descent for Multi-Objective Optimization"): the
    average of the task gradients each projected onto the dual cone of all of them; the update
    never conflicts with any task (torchjd's ``UPGradWeighting``, with its quadprog projections
    called directly: :class:`~polytask.objectives._dual_cone.RowwiseQuadprogProjector`, the
    same weights bit for bit in 0.6 times the time at T = 10)."""

    @staticmethod
    def factory(**options: object) -> Callable[[Tensor], Tensor]:
        if options.get("projector") is None:  # a caller's (``UPGrad(projector=...)``) is kept
            options = {**options, "projector": RowwiseQuadprogProjector()}
        return aggregation.UPGradWeighting(**options)


class FairGrad(_Solved, _Weighted):
    """FairGrad (Ban and Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning"):
    weights from alpha-fair utility maximisation, the positive solution of
    ``G w = w ** (-1 / alpha)`` (``alpha = 1``: proportional fairness, Nash-MTL's condition
    without its normalisation; ``alpha = 0``: equal weights ``1 / T``).

    ``solver="torch"`` (default) solves it by Newton's method on the Gramian's device
    (:func:`~polytask.objectives._solvers.fair_solve`, at most :attr:`max_iter` iterations,
    relative residual ``max_i |(G w)_i w_i ** (1 / alpha) - 1| <= tol``, warm-started from the
    last step's solution); ``"reference"`` calls torchjd's ``FairGradWeighting`` (scipy's
    ``least_squares`` on the host).

    Parameters
    ----------
    path
        The gradient path (``"exact"`` by default).
    alpha
        The fairness parameter (finite, non-negative; 1 by default).
    solver
        ``"torch"`` or ``"reference"``.

    Examples
    --------
    >>> import torch
    >>> method = FairGrad()
    >>> method.bind(["a", "b"])
    >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    >>> method.weights_from_gramian(gram)
    tensor([0.5000, 1.0000])
    """

    factory = aggregation.FairGradWeighting
    max_iter = 10
    """The iteration cap of Newton's method."""
    tol = 1e-6
    """The tolerance on the relative residual (raised to 64 ulps of float32 there)."""

    def __init__(self, path: Path | None = None, alpha: float = 1.0, solver: Solver = "torch"):
        check_option("FairGrad", "alpha", alpha)
        super().__init__(path, alpha=alpha)
        self._init_solver(solver)

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        if self.solver == "reference":
            return super().weights_from_gramian(gram)
        n = gram.shape[0]
        alpha = self.options["alpha"]
        if alpha == 0:
            return torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
        g = gram.detach().to(solver_dtype(gram.dtype))
        start = self._read("start", g, 1.0)
        w, scaled, converged = fair_solve(g, 1 / alpha, start, self.max_iter, self.tol)
        self._write("start", scaled)
        self._count(converged)
        return w.to(gram.dtype)


class NashMTL(_Solved, GradientObjective):
    """Nash-MTL (Navon et al., ICML 2022, "Multi-Task Learning as a Bargaining Game"): the Nash
    bargaining solution, the positive ``a`` with ``(G a)_t a_t = 1`` for every task (i.e.
    ``G a = 1 / a``). As in the authors' code, the losses are weighted by ``a`` (the heads'
    gradients and the step's value) and the shared parameters' update ``sum_t a_t g_t`` is
    scaled down so that its norm ``sqrt(a^T G a)`` is at most ``max_norm`` (0: no clipping);
    :meth:`weights_from_gramian` gives those clipped weights (torchjd's). As in the authors'
    code and torchjd, ``a`` solves the condition on ``G`` itself (their normalisation of ``G``
    cancels out), so with exact solves ``a^T G a = T`` and the default ``max_norm=1`` scales
    the shared update by ``1 / sqrt(T)``. The weights are recomputed every
    ``update_weights_every`` steps (the last ``a`` is reused in between, clipped on the step's
    ``G``).

    ``solver="torch"`` (default) solves ``G a = 1 / a`` by Newton's method on the Gramian's
    device (:func:`~polytask.objectives._solvers.fair_solve` with power 1: the minimiser of the
    strictly convex ``0.5 a^T G a - sum_t log a_t``; at most :attr:`max_iter` iterations,
    relative residual ``max_t |(G a)_t a_t - 1| <= tol``, warm-started from the last step's
    solution). ``"reference"`` runs torchjd's implementation (the paper's sequence of convex
    approximations with cvxpy and ECOS on the host, ``optim_niter`` of them; needs the
    ``methods`` extra). torchjd's Nash weighting reads a Jacobian but depends on it only
    through ``J J^T`` and ``|J^T a|``, so it is given a T x T factor ``M`` with ``M M^T = G``.

    Parameters
    ----------
    path
        The gradient path (``"exact"`` by default).
    max_norm
        The largest norm of the update (finite, non-negative; 0: none).
    update_weights_every
        Solve every this many steps (a positive integer).
    optim_niter
        The number of convex approximations of the reference solver (the torch solver's cap is
        :attr:`max_iter`).
    solver
        ``"torch"`` or ``"reference"``.

    Examples
    --------
    >>> import torch
    >>> method = NashMTL(max_norm=0)
    >>> method.bind(["a", "b"])
    >>> method.weights_from_gramian(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
    tensor([0.5000, 1.0000])
    """

    max_iter = 10
    """The iteration cap of the torch solver's Newton method (from a cold start it converges in
    about 5 to 8 iterations, from the last step's solution in 1 to 3)."""
    tol = 1e-6
    """The tolerance of the torch solver on the relative residual (raised to 64 ulps of float32
    there)."""

    def __init__(
        self,
        path: Path | None = None,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        solver: Solver = "torch",
    ) -> None:
        super().__init__(path)
        check_option("NashMTL", "max_norm", max_norm)
        self.options = {
            "max_norm": max_norm,
            "update_weights_every": as_int(update_weights_every, "NashMTL: update_weights_every"),
            "optim_niter": as_int(optim_niter, "NashMTL: optim_niter"),
        }
        self._init_solver(solver)

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor] | None:
        if self.solver == "reference":  # unclipped: the clipping is this class's, for both
            options = {**self.options, "max_norm": 0.0}
            return aggregation.NashMTL(n_tasks=n_tasks, **options).weighting
        return None

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        """The solution ``a``, scaled down so that ``sqrt(a^T G a) <= max_norm`` (the shared
        parameters' update; :meth:`step` gives the heads ``a`` itself)."""
        alpha = self._solve(gram)
        g = gram.detach().to(alpha.dtype)
        max_norm = self.options["max_norm"]
        if max_norm > 0:
            norm = (alpha @ g @ alpha).clamp_min(0).sqrt()
            alpha = torch.where(norm > max_norm, alpha * (max_norm / norm), alpha)
        return alpha.to(gram.dtype)

    def _solve(self, gram: Tensor) -> Tensor:
        """The bargaining solution ``a`` (unclipped), kept for :meth:`step`."""
        if self.solver == "reference":
            values, vectors = torch.linalg.eigh(gram.double())
            factor = vectors * values.clamp_min(0).sqrt()
            alpha = self.weighting(factor.to(gram.dtype))
        else:
            g = gram.detach().to(solver_dtype(gram.dtype))
            update = self._calls % self.options["update_weights_every"] == 0
            self._calls += 1
            if update:
                start = self._read("start", g, 1.0)
                alpha, scaled, converged = fair_solve(g, 1.0, start, self.max_iter, self.tol)
                self._read("alpha", g, 1.0)
                self._write("start", scaled)
                self._write("alpha", alpha)
                self._count(converged)
            else:
                alpha = self._read("alpha", g, 1.0)
        self._solution = alpha
        return alpha

    def loss_weights(self, weights: Tensor) -> Tensor:
        """As the authors' code: the losses weighted by the solution ``a`` (the heads' gradients
        and the step's value), the shared parameters' gradient ``sum_t a_t g_t`` clipped to
        ``max_norm`` (their ``clip_grad_norm_`` on the shared parameters only). Without
        clipping they are the shared weights themselves (no second pass to the heads)."""
        return weights if self.options["max_norm"] == 0 else self._solution


class GradNorm(GradientObjective):
    """GradNorm (Chen et al., ICML 2018, "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks").

    Learned task weights ``w_t`` (summing to T) scale the losses. Each step, the norm of each
    weighted task gradient on the last shared layer, ``G_t = |grad_W (w_t L_t)|``, is pulled
    towards ``mean(G) * r_t ** alpha`` where ``r_t`` is the task's loss ratio ``L_t / L_t(0)``
    relative to the mean ratio: tasks that train slower get larger weights. The weights learn
    from the L1 gap (its target held constant) with the model's optimizer and are renormalised
    after each optimizer step (``engine.after_step``; the Trainer calls it). The last
    shared layer is the module owning the shared parameters nearest the outputs in the autograd
    graph (the engine finds it; no module order is assumed) and ``W`` is all its shared
    parameters (weight and bias). ``L_t(0)`` is the task's loss at the first step of the fit.

    Parameters
    ----------
    alpha
        The strength of the pull towards a common training rate (the paper's alpha, 1.5);
        finite and non-negative (0: equal weighted gradient norms).

    Notes
    -----
    The learned weights are float32 parameters (add ``engine.parameters()`` to the optimizer);
    they scale the task gradients in the model's own dtype.
    """

    needs_every_task = True
    paths = ("exact",)

    def __init__(self, alpha: float = 1.5) -> None:
        super().__init__("exact")
        check_option("GradNorm", "alpha", alpha)
        self.alpha = alpha

    def _options(self) -> dict[str, object]:
        return {"alpha": self.alpha}

    def _on_bind(self) -> None:
        super()._on_bind()
        self.task_weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.register_buffer("initial_losses", torch.zeros(len(self.task_names)))

    def step(self, losses: Tensor, positions: Positions, grads: TaskGradients) -> Step:
        losses = self._every_task(losses, positions)
        with torch.no_grad():
            first = self.initial_losses == 0
            self.initial_losses.copy_(torch.where(first, losses.detach(), self.initial_losses))
        w = self.task_weights
        norms = grads.last_layer_norms()
        weighted_norms = w * norms.detach()
        ratios = losses.detach() / self.initial_losses
        target = (weighted_norms.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        gap = (weighted_norms - target).abs().sum()
        (w_grad,) = torch.autograd.grad(gap, w)
        w.grad = w_grad if w.grad is None else w.grad + w_grad
        weights = w.detach().to(losses.dtype)  # the weights are float32; the model may not be
        grads.apply(weights)
        return Step((weights * losses.detach()).sum(), weights.clone())

    def after_step(self, recompute: Callable[[], Tensor]) -> None:
        with torch.no_grad():  # keep sum_t w_t = T, as the paper does
            w = self.task_weights.clamp_(min=1e-4)
            w.mul_(len(self.task_names) / w.sum())


class DBMTL(GradientObjective):
    """DB-MTL (Lin et al., 2023, "Dual-Balancing Multi-Task Learning"), as in its authors'
    reference implementation (LibMTL, ``LibMTL/weighting/DB_MTL.py``).

    Loss-scale balancing: each task contributes ``log(L_t + 1e-8)`` (the losses must be
    non-negative). Gradient-magnitude balancing: a buffer ``b_t`` of each task's gradient
    ``g_t`` of its log-loss on the shared parameters is kept, starting from zeros and without
    bias correction,

    ``b_t <- g_t + beta / k ** beta_sigma * (b_t - g_t)`` at step ``k = 1, 2, ...``,

    and the shared parameters get ``sum_t alpha_t b_t`` with
    ``alpha_t = max_s |b_s| / (|b_t| + 1e-8)``, where ``|b_t|`` is the L2 norm of task t's whole
    shared gradient (all shared parameters together): every task counts with the magnitude of
    the largest. The task-specific parameters (heads) get the plain gradient of
    ``sum_t log(L_t + 1e-8)``, neither averaged nor rescaled.

    Parameters
    ----------
    beta
        The buffer's rate (LibMTL's ``DB_beta``, default 0.9), in ``[0, 1)``.
    beta_sigma
        Decay of the rate with the step: ``beta / k ** beta_sigma`` (LibMTL's
        ``DB_beta_sigma``, default 0: a constant rate), finite and non-negative.

    Notes
    -----
    The weights a step reports are ``alpha_t / (L_t + 1e-8)``, the weight on ``grad L_t`` were
    the buffer equal to this step's gradient; the update itself uses the buffer.
    """

    needs_every_task = True
    paths = ("exact",)
    eps = 1e-8
    """The reference's guard, in the logarithm and in the norm ratio."""

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__("exact")
        if not 0 <= beta < 1:
            raise ValueError(f"DBMTL: beta must be in [0, 1), got {beta}")
        check_option("DBMTL", "beta_sigma", beta_sigma)
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)

    def _options(self) -> dict[str, object]:
        return {"beta": self.beta, "beta_sigma": self.beta_sigma}

    def _on_bind(self) -> None:
        super()._on_bind()
        self._buffer: list[Tensor] | None = None  # fresh state for every fit
        self._steps = 0

    def values(self, losses: Tensor) -> Tensor:
        return torch.log(losses + self.eps)

    def step(self, losses: Tensor, positions: Positions, grads: TaskGradients) -> Step:
        losses = self._every_task(losses, positions)
        jacobian = grads.jacobian()
        grads.apply_heads(None)  # the heads get the gradient of sum_t log(L_t + eps)
        self._steps += 1
        rate = self.beta / self._steps**self.beta_sigma
        if self._buffer is None:
            self._buffer = [torch.zeros_like(block) for block in jacobian]
        for buffer, block in zip(self._buffer, jacobian, strict=True):
            buffer.mul_(rate).add_(block.detach(), alpha=1 - rate)
        norms = _block_norms(self._buffer)
        scale = norms.max() / (norms + self.eps)
        grads.apply_shared(self._buffer, scale)
        weights = (scale / (losses.detach() + self.eps)).detach()
        return Step(self.values(losses.detach()).sum(), self._scatter(weights, positions))


def _block_norms(blocks: list[Tensor]) -> Tensor:
    """Each task's gradient norm over the ``(k, *shape)`` Jacobian blocks."""
    return torch.stack([b.reshape(b.shape[0], -1).square().sum(1) for b in blocks]).sum(0).sqrt()
