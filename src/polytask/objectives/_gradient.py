"""Gradient-level methods: task weights from the Gramian of the task gradients.

Most gradient methods of the MTL literature depend on the task gradients only through their
Gramian ``G = J J^T`` (T x T), as torchjd's ``Weighting`` classes make explicit. The update is
then ``sum_t w_t g_t`` with ``w = weighting(G)``. The Gramian comes from one of three paths:

- ``"exact"``: the Jacobian of the losses with respect to the shared (trunk) parameters. When
  the heads read per-task leaves of the features (:meth:`GradientObjective.split_features`),
  one pass through the heads gives every ``dL_t/dz`` and one batched backward through the trunk
  (``autograd.grad(z, shared, dL/dz, is_grads_batched=True)``, a vmap over the tasks) gives the
  Jacobian by the chain rule; otherwise the batched backward starts from the losses. The shared
  gradients are set from it directly (``w @ J``); the heads get their own weighted gradients.
- ``"representation"`` (MGDA-UB, Sener and Koltun 2018): the Gramian of the gradients with
  respect to the shared features ``z``. Each head reads its own detached leaf of ``z``
  (:meth:`GradientObjective.split_features`), so one backward pass through the heads gives
  every ``dL_t/dz`` at once; the trunk then gets one backward pass of ``sum_t w_t dL_t/dz``.
  The step costs about what equal weighting costs plus the T x T weighting. Valid when every
  task's loss is computed from the same batch's ``z`` (one dataset with many target columns).
  Given the plain ``z`` instead (a hand-written loop), the same Gramian comes from one batched
  vector-Jacobian product through the heads.
- ``"naive"``: one ``autograd.grad`` per task. Kept as the reference the tests compare with.

No path keeps T autograd graphs alive: there is one graph per step, retained only across the
batched backward that reads it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchjd import aggregation

from ._base import Objective, Positions, Step
from ._chain import chain_jacobian, read_chain

Path = Literal["exact", "representation", "naive"]
PATHS: tuple[str, ...] = ("exact", "representation", "naive")


def _filled(grads: Sequence[Tensor | None], params: Sequence[Tensor], k: int) -> list[Tensor]:
    """Jacobian blocks with zeros for the parameters the values do not reach."""
    return [
        torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
        for g, p in zip(grads, params, strict=True)
    ]


def task_jacobian(
    losses: Tensor, params: Sequence[Tensor], path: Literal["exact", "naive"] = "exact"
) -> list[Tensor]:
    """Per parameter, the ``(k, *shape)`` Jacobian of the ``k`` losses. The graph is retained.

    ``exact`` is one batched backward pass; ``naive`` one pass per loss (the reference).
    """
    k = len(losses)
    if path == "exact":
        try:
            eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
            grads = torch.autograd.grad(
                losses, params, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
            return _filled(grads, params, k)
        except RuntimeError as error:  # an op without a batching rule
            warnings.warn(
                f"batched backward failed ({error}); falling back to one backward per task",
                RuntimeWarning,
                stacklevel=2,
            )
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
        )
    return [torch.stack(column) for column in zip(*rows, strict=True)]


_CHUNK = 8192
"""Columns per slice of a Jacobian block in :func:`gramian` and :func:`combine_rows`."""


def _slices(flat: Tensor) -> tuple[Tensor, Tensor | None]:
    """A ``(k, n)`` matrix as ``(c, k, _CHUNK)`` column slices (a view) and the columns left.

    BLAS runs a ``k x k`` product over ``n >> k`` columns slower than the same work batched
    over column slices (measured 1.5x slower at k = 10, 1.3x at k = 40 on two CPU cores)."""
    k, n = flat.shape
    c = n // _CHUNK
    head = flat[:, : c * _CHUNK].reshape(k, c, _CHUNK).transpose(0, 1)
    return head, (flat[:, c * _CHUNK :] if n % _CHUNK else None)


def gramian(jacobian: Sequence[Tensor]) -> Tensor:
    """``J J^T`` summed over the parameters' Jacobian blocks (each ``(k, *shape)``)."""
    total = None
    for block in jacobian:
        flat = block.reshape(block.shape[0], -1)
        if flat.shape[1] < 2 * _CHUNK:
            part = flat @ flat.T
        else:
            head, rest = _slices(flat)
            part = torch.bmm(head, head.transpose(1, 2)).sum(0)
            if rest is not None:
                part = part + rest @ rest.T
        total = part if total is None else total + part
    return total


def combine_rows(weights: Tensor, block: Tensor) -> Tensor:
    """``sum_t weights[t] * block[t]`` for a ``(k, *shape)`` Jacobian block (the update)."""
    flat = block.reshape(block.shape[0], -1)
    if flat.shape[1] < 2 * _CHUNK:
        return (weights @ flat).reshape(block.shape[1:])
    head, rest = _slices(flat)
    out = torch.bmm(weights.expand(len(head), 1, -1), head).reshape(-1)
    if rest is not None:
        out = torch.cat([out, weights @ rest])
    return out.reshape(block.shape[1:])


class TaskFeatures(dict):
    """Task name -> its own leaf copy of the shared features ``z`` (no data is copied).

    The heads read the leaves, so the gradient of the summed losses lands separately on each
    leaf: every task's ``dL_t/dz`` from one backward pass. ``z`` keeps the trunk's graph.
    """

    def __init__(self, z: Tensor, names: Sequence[str]) -> None:
        super().__init__({name: z.detach().requires_grad_() for name in names})
        self.z = z


def _head_owners(
    model: nn.Module, params: Sequence[Tensor], task_names: Sequence[str]
) -> list[int | Tensor] | None:
    """For each head parameter, the task whose loss alone reaches it (an index), or for a
    :class:`ColumnHeads` layer the task of each output row (a tensor); None when some
    parameter's owner is unknown (a head module shared by tasks, say)."""
    from ..models import ColumnHeads  # objectives do not depend on models otherwise

    heads = getattr(model, "heads", None)
    position = {name: i for i, name in enumerate(task_names)}
    owners: dict[int, int | Tensor] = {}
    if isinstance(heads, ColumnHeads):
        if set(heads.sizes) != set(position):
            return None
        # made on the heads' device once, so a step indexes it without a host-device copy
        rows = torch.empty(heads.width, dtype=torch.long, device=heads.layer.weight.device)
        for name, (a, b) in heads.bounds.items():
            rows[a:b] = position[name]
        for param in heads.parameters():
            owners[id(param)] = rows
    elif isinstance(heads, nn.ModuleDict):
        for name, head in heads.items():
            for param in head.parameters():
                if id(param) in owners or name not in position:
                    return None
                owners[id(param)] = position[name]
    found = [owners.get(id(p)) for p in params]
    return None if any(o is None for o in found) else found


def _accumulate(param: Tensor, grad: Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad + grad


def _row_scale(weights: Tensor, owner: int | Tensor, grad: Tensor) -> Tensor:
    """The factor of a head gradient: its task's weight, or per output row for a column layer."""
    if isinstance(owner, int):
        return weights[owner]
    scale = weights[owner]
    return scale.reshape(-1, *([1] * (grad.ndim - 1)))


def _trunk_jacobian(
    z: Tensor, params: Sequence[Tensor], jz: Tensor, keep_graph: bool = False
) -> list[Tensor]:
    """The Jacobian blocks of ``params`` from the T feature gradients ``jz``: written out for a
    chain of linear layers (:mod:`._chain`), else one batched backward through the trunk (whose
    graph is kept with ``keep_graph``)."""
    layers = read_chain(z, params)
    if layers is not None:
        return chain_jacobian(layers, jz, params)
    blocks = torch.autograd.grad(
        z, params, jz, retain_graph=keep_graph, is_grads_batched=True, allow_unused=True
    )
    return _filled(blocks, params, len(jz))


class GradientObjective(Objective):
    """Base of the Gramian-based gradient methods: ``weights = weighting(G)``, then the update
    ``sum_t w_t * grad L_t``.

    Parameters
    ----------
    path
        ``"exact"`` (default), ``"representation"`` (MGDA-UB's cheap bound) or ``"naive"``.
    """

    default_path: Path = "exact"

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = path or self.default_path
        if path not in PATHS:
            raise ValueError(f"{type(self).__name__}: path must be one of {PATHS}, got {path!r}")
        self.path = path
        self._shared: list[nn.Parameter] = []
        self._specific: list[nn.Parameter] = []
        self._owners: list[int | Tensor] | None = None

    def make_weighting(self, n_tasks: int) -> Callable[[Tensor], Tensor] | None:
        """The torchjd ``Weighting`` (Gramian -> weights) of the method; None for methods
        that build their update otherwise (GradNorm, DB-MTL)."""
        return None

    def _on_bind(self) -> None:
        self.weighting = self.make_weighting(len(self.task_names))

    def attach(self, model: nn.Module) -> None:
        shared = {id(p) for p in model.shared_parameters()}
        self._shared = [p for p in model.shared_parameters() if p.requires_grad]
        self._specific = [p for p in model.parameters() if p.requires_grad and id(p) not in shared]
        self._owners = _head_owners(model, self._specific, self.task_names)

    def _every_task(self, losses: Tensor | Mapping[str, Tensor], positions: Positions) -> Tensor:
        """The stacked losses, for methods whose per-task state needs every task every step."""
        if positions is not None and len(positions) != len(self.task_names):
            raise ValueError(
                f"{type(self).__name__} needs every task in every step (round_robin schedule, "
                "no missing labels)"
            )
        return self.stack(losses)

    def weights_from_gramian(self, gram: Tensor) -> Tensor:
        return self.weighting(gram)

    def split_features(self, features: Tensor) -> Tensor | TaskFeatures:
        if self.path == "naive":
            return features
        return TaskFeatures(features, self.task_names)

    def backward(
        self,
        losses: Tensor | Mapping[str, Tensor],
        positions: Positions = None,
        features: Tensor | None = None,
    ) -> Step:
        losses = self.stack(losses, positions)
        if not self._shared:
            raise RuntimeError(f"{type(self).__name__}: attach(model) was not called")
        if isinstance(features, TaskFeatures) and self.path != "naive":
            weights = self._through_features(losses, positions, features)
        elif self.path == "representation" and features is not None:
            (jz,) = torch.autograd.grad(
                losses,
                features,
                torch.eye(len(losses), dtype=losses.dtype, device=losses.device),
                retain_graph=True,
                is_grads_batched=True,
            )
            flat = jz.reshape(len(losses), -1)
            weights = self.weights_from_gramian(flat @ flat.T).to(losses.dtype)
            (weights.detach() * losses).sum().backward()
        else:  # exact or naive (also the representation path's fallback for per-task batches)
            path = "naive" if self.path == "naive" else "exact"
            jacobian = task_jacobian(losses, self._shared, path)
            weights = self.weights_from_gramian(gramian(jacobian)).to(losses.dtype).detach()
            for param, block in zip(self._shared, jacobian, strict=True):
                _accumulate(param, combine_rows(weights, block))
            if self._specific:  # heads: a short backward that stops at them
                torch.autograd.backward((weights * losses).sum(), inputs=self._specific)
        weights = weights.detach()
        return Step((weights * losses.detach()).sum(), self._scatter(weights, positions))

    def _through_features(
        self, losses: Tensor, positions: Positions, features: TaskFeatures
    ) -> Tensor:
        """The step when each head read its own leaf of ``z``. One pass through the heads gives
        every ``dL_t/dz`` (and each head's own gradient when every head parameter belongs to one
        task). The representation path takes the Gramian of those; the exact path pulls them
        back through the trunk for all tasks at once (:func:`_trunk_jacobian`), which is the
        Jacobian of the losses on the shared parameters by the chain rule without running the
        heads under vmap. Returns the weights of the present tasks."""
        owned = self._owners is not None
        jz, head_grads = self._leaf_gradients(losses, positions, features, heads=owned)
        if self.path == "representation":
            flat = jz.reshape(len(losses), -1)
            weights = self.weights_from_gramian(flat @ flat.T).to(losses.dtype).detach()
            self._send(weights, losses, positions, features, jz, head_grads)
            return weights
        jacobian = _trunk_jacobian(features.z, self._shared, jz)
        weights = self.weights_from_gramian(gramian(jacobian)).to(losses.dtype).detach()
        for param, block in zip(self._shared, jacobian, strict=True):
            _accumulate(param, combine_rows(weights, block))
        self._weight_heads(weights, losses, positions, head_grads)
        return weights

    def _jacobian(
        self,
        values: Tensor,
        features: Tensor | TaskFeatures | None,
        params: Sequence[Tensor],
        heads: bool,
        keep_graph: bool = False,
    ) -> tuple[list[Tensor], Tensor | None, Sequence[Tensor | None] | None]:
        """The Jacobian of every task's ``values`` on ``params``, for the methods with their own
        update (GradNorm, DB-MTL). When the heads read per-task leaves: one pass through the
        heads, then the pull-back of :func:`_trunk_jacobian`; returns it with the feature
        gradients and the head gradients of :meth:`_leaf_gradients`. Otherwise one batched
        backward from the values (graph retained), with None for both."""
        if isinstance(features, TaskFeatures):
            jz, head_grads = self._leaf_gradients(values, None, features, heads)
            return _trunk_jacobian(features.z, params, jz, keep_graph), jz, head_grads
        return task_jacobian(values, params), None, None

    def _leaf_gradients(
        self, values: Tensor, positions: Positions, features: TaskFeatures, heads: bool
    ) -> tuple[Tensor, Sequence[Tensor | None] | None]:
        """One backward of ``values.sum()`` through the heads: every task's ``d value_t / dz``
        (stacked, ``(k, *z.shape)``) and, with ``heads``, the head parameters' gradients (else
        None, and the heads' graph is kept for a second pass)."""
        names = [self.task_names[i] for i in (positions or range(len(self.task_names)))]
        leaves = [features[name] for name in names]
        inputs = leaves + self._specific if heads else leaves
        grads = torch.autograd.grad(values.sum(), inputs, retain_graph=not heads, allow_unused=True)
        pairs = zip(grads[: len(leaves)], leaves, strict=True)
        jz = torch.stack([torch.zeros_like(z) if g is None else g for g, z in pairs])
        return jz, (grads[len(leaves) :] if heads else None)

    def _send(
        self,
        weights: Tensor,
        losses: Tensor,
        positions: Positions,
        features: TaskFeatures,
        jz: Tensor,
        head_grads: Sequence[Tensor | None] | None,
    ) -> None:
        """The update ``sum_t w_t grad L_t`` from the leaf gradients: ``sum_t w_t dL_t/dz`` in
        one ordinary backward through the trunk, and each head its weighted gradient."""
        seed = torch.tensordot(weights, jz, dims=1)
        torch.autograd.backward(features.z, seed, inputs=self._shared)
        self._weight_heads(weights, losses, positions, head_grads)

    def _weight_heads(
        self,
        weights: Tensor,
        losses: Tensor,
        positions: Positions,
        head_grads: Sequence[Tensor | None] | None,
    ) -> None:
        """Each head's own gradient times its task's weight; when a head serves several tasks
        (``head_grads`` None) a second, short pass of ``sum_t w_t L_t`` through the heads."""
        if head_grads is not None:
            full = self._scatter(weights, positions)
            for param, grad, owner in zip(self._specific, head_grads, self._owners, strict=True):
                if grad is not None:
                    _accumulate(param, grad * _row_scale(full, owner, grad))
        elif self._specific:
            torch.autograd.backward((weights * losses).sum(), inputs=self._specific)

    def extra_repr(self) -> str:
        return f"path={self.path!r}" + (f", {super().extra_repr()}" if self.task_names else "")


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


class PCGrad(_Weighted):
    """PCGrad (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning"): each task
    gradient projected onto the normal plane of the gradients it conflicts with, then summed
    (torchjd's ``PCGradWeighting``)."""

    factory = aggregation.PCGradWeighting


class GradVac(_Weighted):
    """GradVac (Wang et al., ICLR 2021, "Gradient Vaccine"): like PCGrad, but aligns pairs of
    gradients towards an EMA of their cosine similarity (torchjd's ``GradVacWeighting``)."""

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
    from the L1 gap with the model's optimizer and are renormalised after each step.
    """

    def __init__(self, alpha: float = 1.5) -> None:
        super().__init__("exact")
        self.alpha = alpha

    def _on_bind(self) -> None:
        super()._on_bind()
        self.task_weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.register_buffer("initial_losses", torch.zeros(len(self.task_names)))

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        last = [m for m in model.trunk.modules() if any(True for _ in m.parameters(recurse=False))]
        self._last = [p for p in last[-1].parameters(recurse=False) if p.requires_grad]

    def backward(
        self,
        losses: Tensor | Mapping[str, Tensor],
        positions: Positions = None,
        features: Tensor | None = None,
    ) -> Step:
        losses = self._every_task(losses, positions)
        with torch.no_grad():
            first = self.initial_losses == 0
            self.initial_losses.copy_(torch.where(first, losses.detach(), self.initial_losses))
        w = self.task_weights
        owned = self._owners is not None
        # |grad L_t| on the last layer only; the trunk's graph then serves the update
        jacobian, jz, head_grads = self._jacobian(
            losses, features, self._last, heads=owned, keep_graph=True
        )
        norms = gramian(jacobian).diagonal().clamp_min(0).sqrt()
        weighted_norms = w * norms.detach()
        ratios = losses.detach() / self.initial_losses
        target = (weighted_norms.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        gap = (weighted_norms - target).abs().sum()
        (w_grad,) = torch.autograd.grad(gap, w)
        _accumulate(w, w_grad)
        weights = w.detach()
        if jz is None:
            (weights * losses).sum().backward()
        else:
            self._send(weights, losses, None, features, jz, head_grads)
        return Step((weights * losses.detach()).sum(), weights.clone())

    def after_step(self, recompute: Callable[[], Tensor]) -> None:
        with torch.no_grad():  # keep sum_t w_t = T, as the paper does
            w = self.task_weights.clamp_(min=1e-4)
            w.mul_(len(self.task_names) / w.sum())


class DBMTL(GradientObjective):
    """DB-MTL (Lin et al., 2023, "Dual-Balancing for Multi-Task Learning").

    Loss-scale balancing: each task contributes ``log L_t``. Gradient-magnitude balancing: an
    EMA ``g_t`` of each task's gradient of ``log L_t`` on the shared parameters is kept
    (``beta``), and the shared update is ``sum_t (max_s |g_s| / |g_t|) g_t``, so every task
    counts with the magnitude of the largest. Heads get the gradient of ``sum_t log L_t``.
    """

    def __init__(self, beta: float = 0.9) -> None:
        super().__init__("exact")
        if not 0 <= beta < 1:
            raise ValueError(f"DBMTL: beta must be in [0, 1), got {beta}")
        self.beta = beta

    def _on_bind(self) -> None:
        super()._on_bind()
        self._ema: list[Tensor] | None = None  # fresh state for every fit
        self._steps = 0

    def backward(
        self,
        losses: Tensor | Mapping[str, Tensor],
        positions: Positions = None,
        features: Tensor | None = None,
    ) -> Step:
        losses = self._every_task(losses, positions)
        logs = torch.log(losses.clamp_min(torch.finfo(losses.dtype).tiny))
        jacobian, _, head_grads = self._jacobian(logs, features, self._shared, heads=True)
        if head_grads is None:  # the heads get the gradient of sum_t log L_t
            if self._specific:
                torch.autograd.backward(logs.sum(), inputs=self._specific)
        else:
            for param, grad in zip(self._specific, head_grads, strict=True):
                if grad is not None:
                    _accumulate(param, grad)
        self._steps += 1
        if self._ema is None:
            self._ema = [torch.zeros_like(block) for block in jacobian]
        for ema, block in zip(self._ema, jacobian, strict=True):
            ema.mul_(self.beta).add_(block.detach(), alpha=1 - self.beta)
        correction = 1 - self.beta**self._steps  # bias-corrected EMA, as Adam's
        norms = gramian(self._ema).diagonal().clamp_min(0).sqrt() / correction
        scale = norms.max() / norms.clamp_min(1e-12)
        for param, ema in zip(self._shared, self._ema, strict=True):
            _accumulate(param, combine_rows(scale / correction, ema))
        # the effective weight on L_t of this step's log-gradient: scale_t / L_t (approximate,
        # since the update uses the EMA)
        weights = (scale / losses.detach()).detach()
        return Step(logs.detach().sum(), self._scatter(weights, positions))
