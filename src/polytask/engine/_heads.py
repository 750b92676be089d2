"""Linear heads read off the losses' graph: the representation path in closed form.

When task ``t``'s head starts with a linear layer on its leaf of the features,
``u_t = z W_t^T + b_t``, its feature gradient is ``dL_t/dz = delta_t W_t`` with
``delta_t = dL_t/du_t`` (``(batch, o_t)``). Then

- the Gramian of the feature gradients is ``G_st = <delta_s^T delta_t, W_s W_t^T>``: for heads of
  one output (regression, binary tasks) ``G = (Delta^T Delta) * (W W^T)``, products of
  ``(batch, T)`` and ``(T, width)`` matrices instead of a ``T x (batch * width)`` one;
- the seed of the weighted backward through the trunk is ``sum_t w_t delta_t W_t =
  (Delta w) W``.

So the ``T`` feature gradients ``(T, batch, width)`` are never formed: the pass through the heads
stops at the heads' parameters and reads each ``delta_t`` with a hook on the product node that
took the leaf. The heads are read off the graph, as :mod:`._chain` reads the trunk (the node's
saved weight and its edges; no change to the model). Anything else (a leaf read twice, a head
that starts with another operation, autocast's copy before the product, a hook on a leaf, a
head without a trainable parameter the pass reaches, or wide heads where the closed form costs
more than the product it replaces) makes :func:`read_linear_heads` return ``None``, and the
caller forms the feature gradients. Under mixed precision a trunk whose output is already in
the low precision feeds its heads without a copy: the closed form applies, its Gramian in
float32 from the ``delta_t`` (more accurate than one from the low-precision feature gradients).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._graph import _leaf, leaf_readers
from ._chain import _saved

_DEPTH = 4
"""How far below a head's product to look for a trainable parameter (a transpose, a slice)."""


class LinearHeads(NamedTuple):
    nodes: list
    """Each task's product node (``addmm`` / ``mm``) that read its leaf, in task order."""
    weight: Tensor
    """The heads' weight rows stacked in task order, ``(O, width)`` (``O = sum_t o_t``)."""
    widths: tuple[int, ...]
    """Each task's ``o_t``."""
    rows: int
    """The batch's rows."""

    @property
    def columns(self) -> list[tuple[int, int]]:
        """Each task's ``[first, last + 1)`` columns of ``delta`` and rows of ``weight``."""
        ends = [sum(self.widths[: i + 1]) for i in range(len(self.widths))]
        return list(zip([0, *ends[:-1]], ends, strict=True))

    @property
    def owner(self) -> Tensor | None:
        """The task of each column (None when every head has one output)."""
        if all(o == 1 for o in self.widths):
            return None
        return _owner(self.widths, self.weight.device)


@functools.lru_cache(maxsize=64)
def _owner(widths: tuple[int, ...], device: torch.device) -> Tensor:
    """Column -> task index on ``device``, made once per layout (no copy to the device per
    step)."""
    return torch.tensor([t for t, o in enumerate(widths) for _ in range(o)], device=device)


def _reaches(edge: tuple, wanted: set[int], depth: int = _DEPTH) -> bool:
    """Whether ``edge`` leads, through single-input nodes, to a parameter in ``wanted``."""
    node = edge[0]
    while node is not None and depth >= 0:
        leaf = _leaf(node)
        if leaf is not None:
            return id(leaf) in wanted
        edges = [e for e in node.next_functions if e[0] is not None]
        if len(edges) != 1:
            return False
        node, depth = edges[0][0], depth - 1
    return False


def _product_weight(node, slot: int) -> Tensor | None:
    """``W^T`` (``(width, o)``) of a product node ``leaf @ W^T (+ b)`` that read the leaf at
    ``slot``; None for any other node."""
    name = type(node).__name__
    if name == "AddmmBackward0":
        if slot != 1 or _saved(node, "_saved_alpha") != 1:
            return None
    elif name != "MmBackward0" or slot != 0:
        return None
    weight_t = _saved(node, "_saved_mat2")
    return weight_t if isinstance(weight_t, Tensor) and weight_t.ndim == 2 else None


def read_linear_heads(
    values: Tensor,
    leaves: Sequence[Tensor],
    specific: Sequence[Tensor],
    *,
    cheaper_only: bool = True,
) -> LinearHeads | None:
    """Each leaf's linear head, read off the graph of ``values`` (the ``k`` task losses, leaf
    ``t`` read by task ``t``'s head only), when the closed form applies and (``cheaper_only``)
    costs less than forming the feature gradients; else None. ``specific``: the parameters
    the heads' pass computes gradients for."""
    if not leaves or not specific or any(leaf.ndim != 2 for leaf in leaves):
        return None
    # a hook on a leaf (a head that scales or reverses its input's gradient) runs only when
    # the gradient reaches the leaf, which the closed form never computes; a torch without
    # the attribute counts as hooked
    if any(getattr(leaf, "_backward_hooks", True) for leaf in leaves):
        return None
    wanted = {id(p) for p in specific}
    nodes, weights = [], []
    for leaf, reads in zip(leaves, leaf_readers(values, leaves), strict=True):
        if len(reads) != 1:
            return None
        node, slot = reads[0]
        weight_t = _product_weight(node, slot)
        if weight_t is None or weight_t.shape[0] != leaf.shape[1]:
            return None
        # the pass runs the node only when it reaches a parameter it computes a gradient for
        others = [e for i, e in enumerate(node.next_functions) if i != slot]
        if not any(_reaches(edge, wanted) for edge in others):
            return None
        nodes.append(node)
        weights.append(weight_t.detach().T)
    widths = tuple(w.shape[0] for w in weights)
    rows, width, k, total = leaves[0].shape[0], leaves[0].shape[1], len(leaves), sum(widths)
    # products of O x O against k x k over (rows x width): wide heads form dL/dz instead
    if cheaper_only and total * total * (rows + width) > k * k * rows * width:
        return None
    return LinearHeads(nodes, torch.cat(weights), widths, rows)


def head_deltas(
    heads: LinearHeads, values: Tensor, inputs: Sequence[Tensor], retain_graph: bool
) -> tuple[Tensor, Sequence[Tensor | None]]:
    """One backward of ``values.sum()`` to ``inputs`` (the heads' parameters): their
    gradients, and every head's ``delta_t`` side by side, ``(batch, O)``. Each head's node
    runs (:func:`read_linear_heads` checked that it reaches ``inputs``); a gradient autograd
    leaves undefined there is zero."""
    deltas: list[Tensor] = [heads.weight.new_zeros(heads.rows, o) for o in heads.widths]

    def keeper(i: int):
        def keep(grad_outputs: tuple) -> None:
            if grad_outputs[0] is not None:
                deltas[i] = grad_outputs[0]

        return keep

    handles = [node.register_prehook(keeper(i)) for i, node in enumerate(heads.nodes)]
    try:
        grads = torch.autograd.grad(
            values.sum(), list(inputs), retain_graph=retain_graph, allow_unused=True
        )
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(deltas, dim=1), grads


def closed_gramian(delta: Tensor, heads: LinearHeads) -> Tensor:
    """``G_st = <delta_s^T delta_t, W_s W_t^T>`` from ``delta`` ``(batch, O)`` (in the dtype
    the Gramian is wanted in) and the heads' weights."""
    weight = heads.weight.to(delta.dtype)
    products = (delta.T @ delta) * (weight @ weight.T)
    owner = heads.owner
    if owner is None:
        return products
    k = len(heads.widths)  # the blocks' sums: rows, then columns, by task
    blocks = products.new_zeros(k, products.shape[1]).index_add_(0, owner, products)
    return products.new_zeros(k, k).index_add_(1, owner, blocks)


def closed_seed(delta: Tensor, heads: LinearHeads, weights: Tensor) -> Tensor:
    """``sum_t w_t delta_t W_t``, ``(batch, width)``, in ``weights``' dtype."""
    owner = heads.owner
    column_weights = weights if owner is None else weights[owner]
    return (delta.to(weights.dtype) * column_weights) @ heads.weight.to(weights.dtype)


__all__ = ["LinearHeads", "closed_gramian", "closed_seed", "head_deltas", "read_linear_heads"]
