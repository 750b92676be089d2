"""A shared trunk with one head per task, routed by task name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor, nn
from torch.nn import functional as F


class ColumnHeads(nn.Module):
    """One layer whose output columns are divided among the tasks, as a Keras model with a
    single ``Dense(T)`` output over T target columns.

    Parameters
    ----------
    layer
        The shared output layer, e.g. ``nn.Linear(width, T)``.
    sizes
        Task name -> number of output columns, in column order.

    Examples
    --------
    >>> import torch
    >>> heads = ColumnHeads(nn.Linear(4, 3), {"a": 1, "b": 2})
    >>> {k: tuple(v.shape) for k, v in heads(torch.zeros(5, 4)).items()}
    {'a': (5, 1), 'b': (5, 2)}
    """

    def __init__(self, layer: nn.Module, sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.layer = layer
        self.sizes = dict(sizes)
        bounds, start = {}, 0
        for name, size in self.sizes.items():
            bounds[name] = (start, start + size)
            start += size
        self._bounds = bounds
        self.width = start

    def forward(self, h: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        if isinstance(h, Mapping):
            return self._per_task(h)
        out = self.layer(h)
        if out.shape[-1] != self.width:
            raise ValueError(
                f"ColumnHeads: the output layer gives {out.shape[-1]} columns, "
                f"the tasks {list(self.sizes)} need {self.width}"
            )
        return {name: out[:, a:b] for name, (a, b) in self._bounds.items()}

    def keys(self) -> Iterator[str]:
        return iter(self.sizes)

    @property
    def bounds(self) -> dict[str, tuple[int, int]]:
        """Task name -> its ``(first, last + 1)`` output columns."""
        return dict(self._bounds)

    @property
    def splittable(self) -> bool:
        """Whether each task's columns can be computed from its own input (a linear layer)."""
        return isinstance(self.layer, nn.Linear)

    def _per_task(self, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each task's columns from that task's own input: the rows of the weight it owns."""
        if not self.splittable:
            raise TypeError(
                f"ColumnHeads: per-task inputs need an nn.Linear output layer, "
                f"not {type(self.layer).__name__}"
            )
        weight, bias = self.layer.weight, self.layer.bias
        return {
            name: F.linear(h[name], weight[a:b], None if bias is None else bias[a:b])
            for name, (a, b) in self._bounds.items()
            if name in h
        }


class MultiTaskModel(nn.Module):
    """Hard parameter sharing: ``heads[task](trunk(x))`` for every task.

    Parameters
    ----------
    trunk
        The shared part, applied once per input batch.
    heads
        Task name -> head module, or a :class:`ColumnHeads` (one output layer whose columns are
        the tasks).

    Examples
    --------
    >>> import torch
    >>> model = MultiTaskModel(nn.Linear(3, 8), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 2)})
    >>> sorted(model(torch.zeros(4, 3)))
    ['a', 'b']
    >>> tuple(model(torch.zeros(4, 3), task="b").shape)
    (4, 2)
    """

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module] | ColumnHeads) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(trunk, nn.Module):
            hint = (
                f"; to build one from sizes, use {name}.build(in_features, tasks, ...)"
                if hasattr(type(self), "build")
                else ""
            )
            raise TypeError(f"{name}: trunk must be an nn.Module, got {type(trunk).__name__}{hint}")
        if not isinstance(heads, ColumnHeads | Mapping):
            raise TypeError(
                f"{name}: heads must be a mapping task -> nn.Module or ColumnHeads, got "
                f"{type(heads).__name__}"
            )
        self.trunk = trunk
        self.heads = heads if isinstance(heads, ColumnHeads) else nn.ModuleDict(dict(heads))
        self.task_names: tuple[str, ...] = tuple(self.heads.keys())
        if not self.task_names:
            raise ValueError("MultiTaskModel needs at least one head")

    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise KeyError(f"unknown task {task!r}; the model's tasks are {list(self.task_names)}")

    def features(self, x: Tensor) -> Tensor:
        """The shared representation ``trunk(x)``."""
        return self.trunk(x)

    def heads_forward(
        self, h: Tensor | Mapping[str, Tensor], task: str | None = None
    ) -> dict[str, Tensor] | Tensor:
        """Apply the heads to a shared representation (all of them, or one task's).

        ``h`` may also map each task to its own copy of the representation (what the
        representation path of the gradient methods uses to get every task's gradient with
        respect to it in one backward pass); only the tasks it names are computed then.
        """
        if isinstance(self.heads, ColumnHeads):
            outputs = self.heads(h)
            return outputs if task is None else outputs[task]
        if isinstance(h, Mapping):
            if task is not None:
                return self.heads[task](h[task])
            return {name: self.heads[name](h[name]) for name in self.task_names if name in h}
        if task is not None:
            return self.heads[task](h)
        return {name: head(h) for name, head in self.heads.items()}

    def forward(self, x: Tensor, task: str | None = None) -> dict[str, Tensor] | Tensor:
        """All heads' outputs as a mapping task -> output, or only ``task``'s output."""
        if task is not None:
            self._check_task(task)
        return self.heads_forward(self.trunk(x), task)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's parameters (those every task's gradient reaches), and those of a module
        given to two heads or more (shared by those tasks, past the trunk)."""
        shared = list(self.trunk.parameters())
        if isinstance(self.heads, ColumnHeads):  # its rows belong to the tasks
            return shared
        seen = {id(p) for p in shared}
        heads_of: dict[int, int] = {}
        for head in self.heads.values():
            for p in head.parameters():
                heads_of[id(p)] = heads_of.get(id(p), 0) + 1
        for head in self.heads.values():
            for p in head.parameters():
                if heads_of[id(p)] > 1 and id(p) not in seen:
                    seen.add(id(p))
                    shared.append(p)
        return shared

    @property
    def splits_per_task(self) -> bool:
        """Whether each head can read its own copy of the representation (always, except a
        :class:`ColumnHeads` whose layer is not linear)."""
        return not isinstance(self.heads, ColumnHeads) or self.heads.splittable

    def parameter_owners(self) -> dict[int, str | list[str]]:
        """Each head parameter's task, by parameter id; for :class:`ColumnHeads`, the task of
        each output row (its weight's rows are divided among the tasks)."""
        if isinstance(self.heads, ColumnHeads):
            rows = [name for name, (a, b) in self.heads.bounds.items() for _ in range(a, b)]
            return {id(p): rows for p in self.heads.parameters()}
        owners: dict[int, str | list[str]] = {}
        seen_twice: set[int] = set()  # a module shared by two heads belongs to no one task
        for name, head in self.heads.items():
            for p in head.parameters():
                if id(p) in owners:
                    seen_twice.add(id(p))
                owners[id(p)] = name
        return {pid: owner for pid, owner in owners.items() if pid not in seen_twice}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters of one task's head (for :class:`ColumnHeads`, the shared layer)."""
        self._check_task(task)
        if isinstance(self.heads, ColumnHeads):
            return list(self.heads.parameters())
        return list(self.heads[task].parameters())
