"""The task gradients of one step, seen on one path: what a gradient method reads.

Each class implements :class:`polytask.objectives.TaskGradients` for one way the step's losses
relate to the shared parameters:

- :class:`LeafGradients`: the heads read per-task leaves of one batch's features ``z``. One
  backward pass through the heads gives every ``dL_t/dz`` (and each head's own gradient); the
  representation path takes their Gramian and sends ``sum_t w_t dL_t/dz`` through the trunk
  once (with linear heads both in closed form, without forming them: :mod:`._heads`); the
  exact path pulls all of them back through the trunk at once (written out for a
  chain of linear layers, a vmap otherwise) for the Jacobian.
- :class:`LossGradients`: no leaves (a model without a representation, per-task batches, or
  the naive path): the Jacobian of the losses by one batched backward (``naive``: one per task).
- :class:`FeatureGradients`: the representation path given the features themselves: one tensor
  that every head read (a batched vector-Jacobian product through the heads), or one tensor per
  task (per-task batches: the tasks read disjoint rows, so the Gramian is block-diagonal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .._features import TaskFeatures
from ._heads import closed_gramian, closed_seed, head_deltas, read_linear_heads
from ._linalg import combine_rows, gramian, task_jacobian, trunk_jacobian

Owner = int | Tensor
"""A head parameter's task position, or the task position of each of its output rows."""


_LOW = (torch.float16, torch.bfloat16)


class GradientOverflow(ArithmeticError):
    """A scaled (float16) step's gradients overflowed: the gradient scaler skips the step and
    lowers the scale; the method must not see them (its state would take the infinities)."""


def accumulate(param: Tensor, grad: Tensor) -> None:
    """``param.grad += grad`` (or set it)."""
    param.grad = grad if param.grad is None else param.grad + grad


def _row_scale(weights: Tensor, owner: Owner, grad: Tensor) -> Tensor:
    """The factor of a head gradient: its task's weight, or per output row for a column layer."""
    if isinstance(owner, int):
        return weights[owner]
    return weights[owner].reshape(-1, *([1] * (grad.ndim - 1)))


class _Gradients:
    """What every view shares: the parameters, the update of the shared ones from a cached
    Jacobian, and the scatter of present-task weights.

    Two attributes the engine sets when needed (class defaults: neither):

    - ``scale``: the loss scale of a gradient scaler (float16). ``values`` are then the losses
      times ``scale``; every Jacobian, Gramian and norm a method reads is unscaled, in float32,
      and what lands in ``.grad`` is scaled (the scaler unscales it before the step).
    - ``reducer``: a data-parallel fit's :class:`~polytask.engine._reduce.Reducer`: Jacobians
      are averaged and representation Gramians summed over the processes (see its module).
    """

    scale: Tensor | None = None
    reducer = None
    global_shared = False
    """Whether the shared parameters' update came from the processes' common Jacobian (then
    only the heads' gradients are left to average)."""
    fuse_heads = False
    """Average the heads' gradients in the representation Gramian's all-reduce."""
    heads_reduced = False
    """Whether they were."""
    shard_jacobian = False
    """Data-parallel exact path: reduce-scatter the Jacobian for the Gramian and the update
    (see :meth:`_sharded_gramian`) instead of all-reducing it whole."""
    _shard: Tensor | None = None

    def __init__(
        self,
        values: Tensor,
        shared: Sequence[Tensor],
        specific: Sequence[Tensor],
        scatter: Callable[[Tensor], Tensor],
        last_layer: Callable[[], Sequence[Tensor]],
    ) -> None:
        self.values = values
        self.shared, self.specific = list(shared), list(specific)
        self._scatter = scatter  # present-task weights -> (T,) with zeros
        self._last_layer = last_layer
        self._jacobian: list[Tensor] | None = None

    def apply_shared(self, blocks: Sequence[Tensor], weights: Tensor) -> None:
        if blocks and weights.dtype != blocks[0].dtype:
            weights = weights.to(blocks[0].dtype)
        if self.scale is not None:  # .grad holds scaled gradients, like the heads'
            weights = weights * self.scale.to(weights.dtype)
        for param, block in zip(self.shared, blocks, strict=True):
            update = combine_rows(weights, block)
            accumulate(param, update if update.dtype == param.dtype else update.to(param.dtype))
        self.global_shared = self.reducer is not None

    def _unscaled(self, flat: Tensor) -> Tensor:
        """Feature or parameter gradients as a method reads them: float32 at least (float16
        and bfloat16 are widened) and divided by the loss scale."""
        if flat.dtype in _LOW:
            flat = flat.float()
        if self.scale is not None:
            flat = flat / self.scale.to(flat.dtype)
        return flat

    def _finish(self, blocks: list[Tensor]) -> list[Tensor]:
        """Jacobian blocks unscaled and, under data parallelism, averaged over processes."""
        if self.scale is not None or any(b.dtype in _LOW for b in blocks):
            blocks = [self._unscaled(b) for b in blocks]
        if self.reducer is not None:
            blocks = self.reducer.mean(blocks)
        if self.scale is not None:
            self._check_finite(torch.stack([b.sum() for b in blocks]))
        return blocks

    def _reduced_gramian(self, gram: Tensor) -> Tensor:
        """A representation Gramian of this process's rows -> the global batch's."""
        gram = gram if self.reducer is None else self.reducer.gramian(gram)
        if self.scale is not None:
            self._check_finite(gram)
        return gram

    @staticmethod
    def _check_finite(values: Tensor) -> None:
        """Raise :class:`GradientOverflow` on an infinite or NaN value (scaled steps only: one
        host sync, as the gradient scaler's own check makes one)."""
        if not bool(torch.isfinite(values).all()):
            raise GradientOverflow("the scaled gradients overflowed")

    def gramian(self) -> Tensor:
        if self.shard_jacobian and self.reducer is not None and self._jacobian is None:
            return self._sharded_gramian()
        return gramian(self.jacobian())

    def _local_jacobian(self) -> list[Tensor]:
        """This process's Jacobian blocks, as computed (scaled, in the compute dtype)."""
        raise NotImplementedError

    def _sharded_gramian(self) -> Tensor:
        """The Gramian of the processes' mean Jacobian with each process holding a column
        shard of it: a reduce-scatter of the ``T x P`` Jacobian (each process sends and keeps
        ``P / W`` columns' worth), the shards' ``T x T`` Gramians summed by an all-reduce;
        :meth:`apply` then all-gathers the ``P / W`` entries of each process's update shard.
        Half the bytes of an all-reduce of the Jacobian, and ``1/W`` of the Gramian's work."""
        reducer = self.reducer
        blocks = self._local_jacobian()
        if self.scale is not None or any(b.dtype in _LOW for b in blocks):
            blocks = [self._unscaled(b) for b in blocks]
        k = len(self.values)
        columns = sum(b[0].numel() for b in blocks)
        size = -(-columns // reducer.world)
        # rows = parameters' entries, so that each process's shard is a contiguous block
        stacked = blocks[0].new_zeros(size * reducer.world, k)
        start = 0
        for block in blocks:
            n = block[0].numel()
            stacked[start : start + n] = block.reshape(k, n).T
            start += n
        shard = reducer.reduce_scatter_mean(stacked)
        self._shard = shard
        gram = reducer.sum(shard.T @ shard)
        if self.scale is not None:
            self._check_finite(gram)
        return gram

    def _apply_sharded(self, weights: Tensor, heads: Tensor) -> None:
        """The shared update from the column shards: each process's ``P / W`` entries of
        ``sum_t w_t J_t``, all-gathered."""
        combined = weights.to(self._shard.dtype)
        if self.scale is not None:  # .grad holds scaled gradients, like the heads'
            combined = combined * self.scale.to(combined.dtype)
        update = self.reducer.all_gather(self._shard @ combined)
        start = 0
        for param in self.shared:
            n = param.numel()
            accumulate(param, update[start : start + n].view_as(param).to(param.dtype))
            start += n
        self.global_shared = True
        self.apply_heads(heads)

    def apply(self, weights: Tensor, heads: Tensor | None = None) -> None:
        if self._shard is not None:
            self._apply_sharded(weights, weights if heads is None else heads)
        elif self._jacobian is not None:  # the exact update from the Jacobian at hand
            self.apply_shared(self._jacobian, weights)
            self.apply_heads(weights if heads is None else heads)
        else:
            self._send(weights, heads)

    def _send_from_losses(self, weights: Tensor, heads: Tensor | None) -> None:
        """``sum_t w_t value_t`` backward through every parameter, or, with other weights
        for the heads, through the shared ones and then the heads."""
        if heads is None or not self.specific:
            (weights * self.values).sum().backward()
            return
        total = (weights * self.values).sum()
        torch.autograd.backward(total, inputs=self.shared, retain_graph=True)
        self.apply_heads(heads)

    def jacobian(self) -> list[Tensor]:
        """The task Jacobian on the shared parameters, computed once per step (all-reduced and
        unscaled by :meth:`_finish`)."""
        if self._jacobian is None:
            self._jacobian = self._finish(self._local_jacobian())
        return self._jacobian

    def _local_jacobian(self) -> list[Tensor]:
        raise NotImplementedError

    def apply_heads(self, weights: Tensor | None) -> None:
        if self.specific:  # a short backward from the losses that stops at the heads
            total = self.values.sum() if weights is None else (weights * self.values).sum()
            torch.autograd.backward(total, inputs=self.specific, retain_graph=True)

    def _send(self, weights: Tensor, heads: Tensor | None) -> None:
        raise NotImplementedError


class LossGradients(_Gradients):
    """Gradients from the losses' own graph: one batched backward per Jacobian (``naive``:
    one backward per task)."""

    def __init__(self, *args: object, naive: bool = False) -> None:
        super().__init__(*args)
        self.naive = naive

    def _local_jacobian(self) -> list[Tensor]:
        return task_jacobian(self.values, self.shared, "naive" if self.naive else "exact")

    def last_layer_norms(self) -> Tensor:
        blocks = task_jacobian(self.values, self._last_layer(), "naive" if self.naive else "exact")
        return gramian(self._finish(blocks)).diagonal().clamp_min(0).sqrt()

    def _send(self, weights: Tensor, heads: Tensor | None) -> None:
        self._send_from_losses(weights, heads)


class FeatureGradients(_Gradients):
    """The representation path from the features the losses came from: one tensor that every
    task read, or a mapping task -> the tensor its own rows gave (per-task batches)."""

    def __init__(
        self, *args: object, features: Tensor | Mapping[str, Tensor], names: Sequence[str]
    ) -> None:
        super().__init__(*args)
        self.features, self.names = features, list(names)

    def gramian(self) -> Tensor:
        values = self.values
        k = len(values)
        if isinstance(self.features, Tensor):
            eye = torch.eye(k, dtype=values.dtype, device=values.device)
            (jz,) = torch.autograd.grad(
                values, self.features, eye, retain_graph=True, is_grads_batched=True
            )
            flat = self._unscaled(jz.reshape(k, -1))
            return self._reduced_gramian(flat @ flat.T)
        # per-task batches: task t's loss reads only its own z_t, so one backward of the sum
        # separates every dL_t/dz_t; tasks with different rows have orthogonal gradients
        zs = [self.features[name] for name in self.names]
        grads = torch.autograd.grad(values.sum(), zs, retain_graph=True, allow_unused=True)
        grads = [None if g is None else self._unscaled(g) for g in grads]
        gram = torch.zeros(
            k, k, dtype=torch.promote_types(values.dtype, torch.float32), device=values.device
        )
        for s in range(k):
            for t in range(s, k):
                if zs[s] is zs[t] and grads[s] is not None and grads[t] is not None:
                    gram[s, t] = gram[t, s] = (grads[s] * grads[t]).sum()
        return self._reduced_gramian(gram)

    def _send(self, weights: Tensor, heads: Tensor | None) -> None:
        self._send_from_losses(weights, heads)

    def jacobian(self) -> list[Tensor]:
        raise TypeError("the representation path has no Jacobian on the shared parameters")

    last_layer_norms = jacobian


class LeafGradients(_Gradients):
    """Gradients when each head read its own leaf of one batch's features (see module doc)."""

    closed_form_heads = True
    """On the representation path, take the Gramian and the trunk's seed in closed form when
    every head starts with a linear layer on its leaf (:mod:`._heads`); ``False`` always forms
    the feature gradients (the tests compare the two)."""

    def __init__(
        self,
        *args: object,
        features: TaskFeatures,
        names: Sequence[str],
        owners: Sequence[Owner] | None,
        representation: bool,
    ) -> None:
        super().__init__(*args)
        self.features, self.names = features, list(names)
        self.owners = owners
        self.representation = representation
        self._jz: Tensor | None = None
        self._head_grads: Sequence[Tensor | None] | None = None
        self._heads = None  # LinearHeads, when the closed form ran
        self._delta: Tensor | None = None

    def _leaf_pass(self) -> Tensor:
        """One backward of ``values.sum()`` through the heads: every task's ``d value_t / dz``
        (stacked, ``(k, *z.shape)``) and the head parameters' gradients. The heads' graph is
        kept only when a head's task is unknown (a weighted second pass may need it)."""
        if self._jz is None and self._delta is not None:  # after the closed form: delta_t W_t
            self._jz = torch.stack(
                [self._delta[:, a:b] @ self._heads.weight[a:b] for a, b in self._heads.columns]
            )
        if self._jz is None:
            leaves = [self.features[name] for name in self.names]
            inputs = leaves + self.specific
            grads = torch.autograd.grad(
                self.values.sum(), inputs, retain_graph=self.owners is None, allow_unused=True
            )
            pairs = zip(grads[: len(leaves)], leaves, strict=True)
            self._jz = torch.stack([torch.zeros_like(z) if g is None else g for g, z in pairs])
            self._head_grads = grads[len(leaves) :]
        return self._jz

    def _local_jacobian(self) -> list[Tensor]:
        return trunk_jacobian(self.features.z, self.shared, self._leaf_pass())

    def _closed_form(self) -> bool:
        """Run the heads' pass in closed form (see :mod:`._heads`) when the heads allow it and
        no feature gradient was formed yet; whether the closed form holds the step."""
        if self._delta is not None:
            return True
        if self._jz is not None or not self.closed_form_heads:
            return False
        leaves = [self.features[name] for name in self.names]
        heads = read_linear_heads(self.values, leaves, self.specific)
        if heads is None:
            return False
        self._delta, self._head_grads = head_deltas(
            heads, self.values, self.specific, retain_graph=self.owners is None
        )
        self._heads = heads
        return True

    def gramian(self) -> Tensor:
        if self.representation and self._closed_form():
            gram = closed_gramian(self._unscaled(self._delta), self._heads)
            if self.fuse_heads and self.owners is not None:
                return self._reduced_with_heads(gram)
            return self._reduced_gramian(gram)
        if self.representation:
            flat = self._unscaled(self._leaf_pass().reshape(len(self.values), -1))
            gram = flat @ flat.T
            if self.fuse_heads and self.owners is not None:
                return self._reduced_with_heads(gram)
            return self._reduced_gramian(gram)
        return super().gramian()

    def _reduced_with_heads(self, gram: Tensor) -> Tensor:
        """One all-reduce for the Gramian and the heads' own (unweighted) gradients: every
        process derives the same weights, so averaging the heads' gradients before weighting
        them is the same as after."""
        grads = self._head_grads
        held = [g for g in grads if g is not None]
        means = self.reducer.mean([gram, *held])
        gram = means[0] / self.reducer.world  # (1/W^2) sum_r G_r
        rest = iter(means[1:])
        # the concatenated buffer took the widest dtype: each gradient back to its own
        self._head_grads = [None if g is None else next(rest).to(g.dtype) for g in grads]
        self.heads_reduced = True
        if self.scale is not None:
            self._check_finite(gram)
        return gram

    def last_layer_norms(self) -> Tensor:
        # the trunk's graph stays for the update that follows
        blocks = trunk_jacobian(self.features.z, self._last_layer(), self._leaf_pass(), True)
        return gramian(self._finish(blocks)).diagonal().clamp_min(0).sqrt()

    def apply_heads(self, weights: Tensor | None) -> None:
        if self._head_grads is None:
            self._leaf_pass()
        if weights is None:
            for param, grad in zip(self.specific, self._head_grads, strict=True):
                if grad is not None:
                    accumulate(param, grad)
        elif self.owners is not None:
            full = self._scatter(weights)
            for param, grad, owner in zip(
                self.specific, self._head_grads, self.owners, strict=True
            ):
                if grad is not None:
                    accumulate(param, grad * _row_scale(full, owner, grad))
        elif self.specific:  # a head serves several tasks: a short weighted pass
            torch.autograd.backward((weights * self.values).sum(), inputs=self.specific)

    def _send(self, weights: Tensor, heads: Tensor | None) -> None:
        """``sum_t w_t dL_t/dz`` through the trunk in one ordinary backward, then the heads."""
        heads = weights if heads is None else heads
        if self._delta is not None:  # closed form: (Delta w) W
            seed = closed_seed(self._delta, self._heads, weights).to(self._delta.dtype)
            torch.autograd.backward(self.features.z, seed, inputs=self.shared)
            self.apply_heads(heads)
            return
        jz = self._leaf_pass()
        if jz.dtype == weights.dtype:
            seed = torch.tensordot(weights, jz, dims=1)
        else:  # autocast features: combine in the weights' precision, send in the features'
            seed = torch.tensordot(weights, jz.to(weights.dtype), dims=1).to(jz.dtype)
        torch.autograd.backward(self.features.z, seed, inputs=self.shared)
        self.apply_heads(heads)
