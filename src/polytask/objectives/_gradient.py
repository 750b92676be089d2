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

from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchjd import aggregation

from .._features import TaskFeatures
from ._base import Objective, Positions, Step, TaskGradients

Path = Literal["exact", "representation", "naive"]
PATHS: tuple[str, ...] = ("exact", "representation", "naive")

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

    def step(self, losses: Tensor, positions: Positions, grads: TaskGradients) -> Step:
        """One update: weights from the Gramian, then ``sum_t w_t grad L_t`` into ``.grad``.

        ``losses`` holds the present tasks' losses (``positions`` says which); ``grads`` is the
        engine's view of their gradients on the step's path."""
        weights = self.weights_from_gramian(grads.gramian()).to(losses.dtype).detach()
        grads.apply(weights)
        return Step((weights * losses.detach()).sum(), self._scatter(weights, positions))

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
    """A gradient method defined by one torchjd Gramian weighting."""

    factory: Callable[..., Callable[[Tensor], Tensor]]

    def __init__(self, path: Path | None = None, **options: float) -> None:
        super().__init__(path)
        self.options = options

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor]:
        return type(self).factory(**self.options)


class MGDA(_Weighted):
    """MGDA (Désidéri 2012; Sener and Koltun, NeurIPS 2018, "Multi-Task Learning as
    Multi-Objective Optimization"): the minimum-norm point of the convex hull of the task
    gradients (torchjd's ``MGDAWeighting``). With ``path="representation"`` this is MGDA-UB."""

    factory = aggregation.MGDAWeighting


_SHUFFLE_STREAM = 0x5348_5546  # tells the shuffles' stream apart from the fit's own draws


def shuffle_seed(seed: int) -> int:
    """The seed of a shuffling method's generator, derived from the global RNG's seed (the
    Trainer's ``seed`` inside a fit) so that its stream is not the one dropout draws from."""
    sequence = np.random.SeedSequence(seed % 2**128, spawn_key=(_SHUFFLE_STREAM,))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


class _Shuffling(_Weighted):
    """A torchjd weighting that shuffles the task order with ``torch.randperm`` on the global
    RNG (torchjd takes no generator). Here the shuffles draw from the method's own generator:

    - it is seeded once per fit, at the first step, from ``torch.initial_seed()``: inside
      :meth:`polytask.Trainer.fit` that is the Trainer's ``seed`` (the fit seeds the global RNG
      inside ``torch.random.fork_rng``), in a loop of your own the last ``torch.manual_seed``;
    - the global RNG is neither read nor advanced by a step, so the method does not shift the
      dropout masks (or any other draw) of the fit: two methods under one seed see the same
      masks, and the caller's RNG is left as it was.

    The same seed therefore gives the same shuffles, and the same updates, whatever state the
    caller's RNG is in.
    """

    def _on_bind(self) -> None:
        super()._on_bind()
        self.generator: torch.Generator | None = None  # fresh stream for every fit

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(shuffle_seed(torch.initial_seed()))
        # torchjd draws from the default CPU generator: lend it this method's state for the
        # call, take the advanced state back, and restore the global RNG as it was
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.set_state(self.generator.get_state())
            weights = self.weighting(gram)
            self.generator.set_state(torch.random.default_generator.get_state())
        return weights


class PCGrad(_Shuffling):
    """PCGrad (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning"): each task
    gradient projected onto the normal plane of the gradients it conflicts with, in a random
    order, then summed (torchjd's ``PCGradWeighting``). The random order draws from the
    method's own generator, seeded by the fit (see :class:`_Shuffling`), never from the global
    RNG."""

    factory = aggregation.PCGradWeighting


class GradVac(_Shuffling):
    """GradVac (Wang et al., ICLR 2021, "Gradient Vaccine"): like PCGrad, but aligns pairs of
    gradients towards an EMA of their cosine similarity (torchjd's ``GradVacWeighting``). The
    random order of the pairs draws from the method's own generator, seeded by the fit (see
    :class:`_Shuffling`), never from the global RNG."""

    factory = aggregation.GradVacWeighting


class CAGrad(_Weighted):
    """CAGrad (Liu et al., NeurIPS 2021, "Conflict-Averse Gradient Descent"): the update that
    maximises the worst task improvement within a ball around the average gradient (torchjd's
    ``CAGradWeighting``, ``c=0.4`` as in the paper; needs the ``methods`` extra)."""

    factory = aggregation.CAGradWeighting

    def __init__(self, path: Path | None = None, c: float = 0.4) -> None:
        super().__init__(path, c=c)


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
    never conflicts with any task (torchjd's ``UPGradWeighting``)."""

    factory = aggregation.UPGradWeighting


class FairGrad(_Weighted):
    """FairGrad (Ban and Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning"):
    weights from alpha-fair utility maximisation (torchjd's ``FairGradWeighting``, alpha=1)."""

    factory = aggregation.FairGradWeighting

    def __init__(self, path: Path | None = None, alpha: float = 1.0) -> None:
        super().__init__(path, alpha=alpha)


class NashMTL(GradientObjective):
    """Nash-MTL (Navon et al., ICML 2022, "Multi-Task Learning as a Bargaining Game"): the
    Nash bargaining solution ``(G a) * a = 1`` (torchjd's implementation; needs the ``methods``
    extra). torchjd's Nash weighting reads a Jacobian but depends on it only through ``J J^T``
    and ``|J^T a|``, so it is given a T x T factor ``M`` with ``M M^T = G`` - the same weights
    without the full Jacobian."""

    def __init__(
        self,
        path: Path | None = None,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        super().__init__(path)
        self.options = {
            "max_norm": max_norm,
            "update_weights_every": update_weights_every,
            "optim_niter": optim_niter,
        }

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor]:
        return aggregation.NashMTL(n_tasks=n_tasks, **self.options).weighting

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        values, vectors = torch.linalg.eigh(gram.double())
        factor = vectors * values.clamp_min(0).sqrt()
        return self.weighting(factor.to(gram.dtype))


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
        The strength of the pull towards a common training rate (the paper's alpha, 1.5).

    Notes
    -----
    The learned weights are float32 parameters (add ``engine.parameters()`` to the optimizer);
    they scale the task gradients in the model's own dtype.
    """

    needs_every_task = True
    paths = ("exact",)

    def __init__(self, alpha: float = 1.5) -> None:
        super().__init__("exact")
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
        ``DB_beta_sigma``, default 0: a constant rate), non-negative.

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
        if not beta_sigma >= 0:
            raise ValueError(f"DBMTL: beta_sigma must be non-negative, got {beta_sigma}")
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
