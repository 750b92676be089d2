"""Reading an autograd graph: which parameters an output reaches, which come first, and which
nodes read a given leaf.

The model protocol uses it to infer a user's shared parameters and each head's task from one
forward pass; the gradient engine to find the last shared layer and the heads that read the
features' leaves. Only public autograd API is used (``grad_fn``, ``next_functions`` and
``AccumulateGrad.variable``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor


def _leaf(node: object) -> Tensor | None:
    return getattr(node, "variable", None)


def reached_parameters(output: Tensor) -> set[int]:
    """The ids of the leaf tensors (parameters) whose gradient ``output`` reaches.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    >>> reached_parameters((a * 2).sum()) == {id(a)}
    True
    """
    if output.grad_fn is None:
        return {id(output)} if output.requires_grad else set()
    return reached_from(output.grad_fn)


def reached_from(node: object) -> set[int]:
    """:func:`reached_parameters` from a node of the graph."""
    found: set[int] = set()
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        leaf = _leaf(current)
        if leaf is not None:
            found.add(id(leaf))
            continue
        stack.extend(edge[0] for edge in current.next_functions if edge[0] is not None)
    return found


def nearest_parameters(outputs: Iterable[Tensor], among: set[int]) -> set[int]:
    """Of the parameters in ``among``, those fewest graph steps away from ``outputs``
    (breadth-first): the parameters of the layer that produced them, for a trunk."""
    frontier = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen: set[int] = set()
    while frontier:
        found, following = set(), []
        for node in frontier:
            if id(node) in seen:
                continue
            seen.add(id(node))
            leaf = _leaf(node)
            if leaf is not None:
                if id(leaf) in among:
                    found.add(id(leaf))
                continue
            following.extend(edge[0] for edge in node.next_functions if edge[0] is not None)
        if found:
            return found
        frontier = following
    return set()


def leaf_readers(output: Tensor, leaves: Sequence[Tensor]) -> list[list[tuple[object, int]]]:
    """For each of ``leaves``, the ``(node, edge position)`` pairs of ``output``'s graph that
    read it (empty for a leaf the graph does not reach).

    Examples
    --------
    >>> import torch
    >>> a = torch.ones(2, requires_grad=True)
    >>> [[(type(node).__name__, slot) for node, slot in r] for r in leaf_readers(a * 3, [a])]
    [[('MulBackward0', 0)]]
    """
    position = {id(leaf): i for i, leaf in enumerate(leaves)}
    found: list[list[tuple[object, int]]] = [[] for _ in leaves]
    if output.grad_fn is None:
        return found
    seen = {output.grad_fn}  # the nodes themselves: held, so no id is reused while walking
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        for slot, (child, _) in enumerate(node.next_functions):
            if child is None:
                continue
            leaf = _leaf(child)
            if leaf is not None:
                if id(leaf) in position:
                    found[position[id(leaf)]].append((node, slot))
            elif child not in seen:
                seen.add(child)
                stack.append(child)
    return found
