"""The engine's link to a process group: what a gradient method needs reduced across the
processes of a data-parallel fit, and nothing when there is one process.

Every process holds its own rows of the step. The trainer scales each process's task losses
so that the global mean loss of task t is the *mean over processes* of their losses
(``L_t = (1/W) sum_r l_{r,t}``, with ``l_{r,t} = W * n_{r,t} / n_t * mean loss of its rows``;
``l = L_local`` when the shards are equal). Then, with ``W`` processes:

- the Jacobian of the global losses on any parameter is the mean of the processes' Jacobians.
  A method that reads only its Gramian (UPGrad, MGDA, PCGrad, CAGrad, Nash-MTL...) gets it
  from column shards: a reduce-scatter of the ``T x P_shared`` Jacobian leaves each process
  ``P_shared / W`` columns of the mean, a ``T x T`` all-reduce sums the shards' Gramians, and
  an all-gather of the ``P_shared / W`` entries of each shard's update gives the update: each
  process sends about ``(T + 1) P_shared (W - 1) / W`` values, half of an all-reduce of the
  Jacobian, and computes ``1/W`` of the Gramian. A method that reads the Jacobian itself
  (DB-MTL) all-reduces it whole (``2 T P_shared (W - 1) / W``), GradNorm the last shared
  layer's block;
- the Gramian of the global losses' feature gradients is ``(1/W^2) sum_r G_r``: row ``i`` of
  the global batch lives on one process only, so ``dL/dz`` has disjoint row blocks and the
  cross terms between processes are zero (the representation path all-reduces ``T x T``);
  the same sum is *wrong* for the Jacobian on the shared parameters, whose every entry sums
  over all rows: there ``(mean_r J_r)(mean_r J_r)^T`` has cross terms ``J_r J_s^T``;
- a gradient is the mean of the processes' gradients (DDP's all-reduce, or
  :meth:`Reducer.average_grads` when the engine reduces itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

SMALL_PAYLOAD_BYTES = 64 * 1024
"""At most this many bytes, ``gloo`` reduces by an all-gather and a local reduction."""


class Reducer:
    """All-reduces over one process group, counting the bytes each step sends.

    Parameters
    ----------
    group
        The process group (``None``: the default group, which must be initialised).

    Examples
    --------
    A group of one process (a fit under torchrun has one per process, each with its rows):

    >>> import tempfile, torch, torch.distributed as dist
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> reducer = Reducer()
    >>> reducer.gramian(torch.eye(2)).tolist(), reducer.bytes  # one process sends nothing
    ([[1.0, 0.0], [0.0, 1.0]], 0)
    >>> dist.destroy_process_group()
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        # gloo's ring all-reduce takes 2 (W - 1) rounds of messages, its all-gather W - 1:
        # a tiny payload (losses, a T x T Gramian) is bound by those rounds, not by bytes
        # (inside a 2-process fit, 10.7 KB all-reduced waited ~1.5 ms, all-gathered ~0.4 ms)
        self._gathers_small = self.world > 1 and dist.get_backend(group) == "gloo"
        self.bytes = 0
        """Bytes this process has sent so far, counted as ring algorithms send them (an
        all-reduce of ``n`` bytes sends ``2 n (W - 1) / W``, a reduce-scatter or an all-gather
        of ``n`` bytes in all ``n (W - 1) / W``); the benchmark reads it."""

    def _count(self, tensor: Tensor, passes: int, copies: int = 1) -> None:
        total = copies * tensor.numel() * tensor.element_size()
        self.bytes += passes * total * (self.world - 1) // self.world

    def _all_reduce(self, flat: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
        small = flat.numel() * flat.element_size() <= SMALL_PAYLOAD_BYTES
        if self._gathers_small and small and op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
            # every process reduces the same parts in rank order: identical results everywhere
            stacked = self.all_gather(flat.unsqueeze(0))
            reduced = stacked.sum(0) if op == dist.ReduceOp.SUM else stacked.amax(0)
            return flat.copy_(reduced)
        self._count(flat, 2)
        dist.all_reduce(flat, op=op, group=self.group)
        return flat

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum over the processes (a new tensor)."""
        return self._all_reduce(tensor.detach().clone())

    def reduce_scatter_mean(self, stacked: Tensor) -> Tensor:
        """This process's block of the processes' mean of ``stacked`` (``W`` equal blocks
        along the first dimension)."""
        self._count(stacked, 1)
        blocks = list(stacked.chunk(self.world))
        out = torch.empty_like(blocks[0])
        dist.reduce_scatter(out, blocks, group=self.group)
        return out.div_(self.world)

    def all_gather(self, part: Tensor) -> Tensor:
        """Every process's ``part``, concatenated in rank order."""
        parts = [torch.empty_like(part) for _ in range(self.world)]
        self._count(part, 1, copies=self.world)
        dist.all_gather(parts, part.contiguous(), group=self.group)
        return torch.cat(parts)

    def mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor's mean over the processes, in one all-reduce (new tensors)."""
        if len(tensors) == 1:
            return [self._all_reduce(tensors[0].detach().clone()).div_(self.world)]
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        self._all_reduce(flat).div_(self.world)
        out, start = [], 0
        for t in tensors:
            out.append(flat[start : start + t.numel()].view_as(t))
            start += t.numel()
        return out

    def maximum(self, tensor: Tensor) -> Tensor:
        """The elementwise maximum over the processes (a new tensor)."""
        return self._all_reduce(tensor.detach().clone(), dist.ReduceOp.MAX)

    def gramian(self, local: Tensor) -> Tensor:
        """The Gramian of the global batch's feature gradients from this process's own:
        ``(1/W^2) sum_r G_r`` (disjoint rows: no cross terms)."""
        return self._all_reduce(local.detach().clone()).div_(self.world**2)

    def straight_through(self, local: Tensor) -> Tensor:
        """The global losses as values, this process's losses as the gradient: the mean of
        ``local`` over the processes, differentiable as ``local`` itself. A loss-level method
        then updates its state and weights from the global losses, identically everywhere,
        and the gradient all-reduce averages the rest."""
        detached = local.detach()
        (mean,) = self.mean([detached])
        # mean + 0, not local + (mean - local): the value is the mean bit for bit, on every
        # process alike (a method's state, e.g. FAMO's, must not differ between them)
        return mean + (local - detached)

    def average_grads(self, params: Iterable[Tensor]) -> None:
        """Replace every ``.grad`` of ``params`` by its mean over the processes (one
        all-reduce; parameters without a gradient are left out, and are the same ones on
        every process, since every process runs the same tasks)."""
        held = [p for p in params if p.grad is not None]
        if not held:
            return
        means = self.mean([p.grad for p in held])
        for param, mean in zip(held, means, strict=True):
            param.grad = mean.to(param.grad.dtype)

    def broadcast(self, tensors: Iterable[Tensor]) -> None:
        """Rank 0's values into every process's tensors (the model's initial weights)."""
        for tensor in tensors:
            dist.broadcast(tensor.data, 0, group=self.group)


__all__ = ["Reducer"]
