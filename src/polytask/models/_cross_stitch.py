"""Cross-stitch networks under the model protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ._experts import refuse_repeats
from ._gated import (
    TaskSpec,
    _model_generator,
    _Routed,
    build_towers,
    check_count,
    dense,
    params,
    probe,
)


class CrossStitch(_Routed):
    """Cross-stitch networks (Misra et al., "Cross-stitch Networks for Multi-task Learning",
    CVPR 2016).

    One column of layers per task; after each layer a cross-stitch unit mixes the columns'
    activations, ``h~_t = sum_s alpha[t, s] h_s`` (one ``T x T`` matrix per layer, the paper's
    equation 1), and each task's tower reads its column's last mixed activations. The units
    start near the identity, as in the paper: ``alpha_same`` on the diagonal and the rest of
    each row spread evenly over the other tasks (the paper's best start, ``(alpha_S,
    alpha_D) = (0.9, 0.1)`` for two tasks). The paper also trains the units with a learning
    rate 10^2-10^3 times the columns' (give them their own parameter group).

    What the gradient methods see: every column's layers reach every task (through the units
    after them), and so do every unit but the last: all of that is shared. Row ``t`` of the last
    unit reaches task ``t`` only, so the last unit's rows and the towers are the tasks' own
    (``parameter_owners`` gives the last unit one task per row). The representation is what the
    last unit mixes, the columns' last activations stacked, ``(batch, T, width)``: every task
    reads all of it, through its row of the last unit.

    Parameters
    ----------
    in_features
        Input width.
    tasks
        Task names, :class:`~polytask.Task` objects (their ``size`` is the output width) or a
        mapping name -> output width; at least two.
    hidden
        Units of each column's layers (each followed by ``activation`` and a cross-stitch unit).
    tower_hidden
        Units of each tower's hidden layers before its linear output layer (the paper's task
        output is one layer: the default ``()``).
    activation
        Activation of the columns and towers.
    alpha_same
        Initial weight of a column on itself; 0.9 in the paper.
    columns
        Task -> its column's layers (a sequence of modules, the same number per task), instead
        of the default MLP columns; the layers of one depth must give the same shape in every
        column (a unit mixes them).
    towers
        Task -> tower module reading its column's last mixed activations.
    seed
        Seed of the initialisation; the global RNG is not touched.

    Examples
    --------
    >>> import torch
    >>> model = CrossStitch(5, {"a": 1, "b": 2}, hidden=[8, 8])
    >>> x = torch.randn(3, 5)
    >>> {t: tuple(out.shape) for t, out in model(x).items()}
    {'a': (3, 1), 'b': (3, 2)}
    >>> tuple(model.features(x).shape)
    (3, 2, 8)
    >>> model.units[0].detach()
    tensor([[0.9000, 0.1000],
            [0.1000, 0.9000]])
    """

    def __init__(
        self,
        in_features: int,
        tasks: TaskSpec,
        *,
        hidden: Sequence[int] = (32, 32),
        tower_hidden: Sequence[int] = (),
        activation: str = "relu",
        alpha_same: float = 0.9,
        columns: Mapping[str, Sequence[nn.Module]] | None = None,
        towers: Mapping[str, nn.Module] | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        sizes = self._set_tasks(tasks)
        check_count(name, "in_features", in_features)
        names = self.task_names
        if len(names) < 2:
            raise ValueError(f"{name}: cross-stitch units mix two tasks or more, got {list(names)}")
        if not 0.0 <= alpha_same <= 1.0:
            raise ValueError(f"{name}: alpha_same must be in [0, 1], got {alpha_same!r}")
        generator = _model_generator(seed)
        if columns is None:
            if not list(hidden):
                raise ValueError(f"{name}: a column needs at least one layer (hidden=[...])")
            built = {}
            for t in names:
                layers, fan_in = [], in_features
                for width in hidden:
                    layers.append(dense(fan_in, [width], None, activation, generator))
                    fan_in = width
                built[t] = layers
            columns = built
        self.columns = nn.ModuleDict(
            {t: nn.ModuleList(list(layers)) for t, layers in self._check_columns(columns).items()}
        )
        depth = len(self.columns[names[0]])
        width = self._probe_width(in_features)
        t = len(names)
        off = (1.0 - alpha_same) / (t - 1)
        start = torch.full((t, t), off) + (alpha_same - off) * torch.eye(t)
        self.units = nn.ParameterList([nn.Parameter(start.clone()) for _ in range(depth)])
        self.in_features, self.width, self.alpha_same = in_features, width, alpha_same
        self.towers = build_towers(
            name,
            sizes,
            towers,
            width,
            tower_hidden,
            activation,
            generator,
            reads="its column's last mixed activations",
        )
        self._refuse_tied_parts()

    def _check_columns(self, columns: Mapping[str, Sequence[nn.Module]]) -> dict:
        name = type(self).__name__
        unknown = [t for t in columns if t not in self.task_names]
        missing = [t for t in self.task_names if t not in columns]
        if unknown or missing:
            raise ValueError(
                f"{name}: columns must give one column per task {list(self.task_names)}; "
                f"unknown {unknown}, missing {missing}"
            )
        depths = {t: len(list(columns[t])) for t in self.task_names}
        if len(set(depths.values())) != 1 or min(depths.values()) < 1:
            raise ValueError(
                f"{name}: every column needs the same number (>= 1) of layers: {depths}"
            )
        layers = {
            f"layer {depth} of the column of {t!r}": layer
            for t in self.task_names
            for depth, layer in enumerate(columns[t])
        }
        refuse_repeats(name, layers, "layer")
        return {t: list(columns[t]) for t in self.task_names}

    def _probe_width(self, in_features: int) -> int:
        """Run the columns once on a dummy batch: the layers of one depth must agree."""
        name = type(self).__name__
        hs = {t: torch.zeros(2, in_features) for t in self.task_names}
        for depth in range(len(self.columns[self.task_names[0]])):
            for t in self.task_names:
                try:
                    hs[t] = probe(self.columns[t][depth], hs[t])
                except Exception as error:  # the user's layer cannot read it
                    raise ValueError(
                        f"{name}: layer {depth} of the column of {t!r} cannot read its input "
                        f"{tuple(hs[t].shape)}: {error}"
                    ) from None
            shapes = {t: tuple(h.shape) for t, h in hs.items()}
            if len(set(shapes.values())) != 1:
                raise ValueError(
                    f"{name}: the columns' layers {depth} give different shapes {shapes}; a "
                    "cross-stitch unit mixes them, so they must agree"
                )
        first = hs[self.task_names[0]]
        if first.ndim != 2:
            raise ValueError(
                f"{name}: the columns end with shape {tuple(first.shape)}; the towers read "
                "(batch, width): end each column with a flattening layer"
            )
        return int(first.shape[1])

    def _features(self, x: Tensor) -> Tensor:
        names = self.task_names
        hs = [x] * len(names)
        depth = len(self.units)
        for level in range(depth):
            out = torch.stack(
                [self.columns[t][level](h) for t, h in zip(names, hs, strict=True)], 1
            )
            if level == depth - 1:
                return out  # what the last unit mixes: (batch, T, width)
            hs = list(torch.einsum("ts,bs...->bt...", self.units[level], out).unbind(1))
        raise AssertionError("unreachable")

    def _head(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        row = self.units[-1][self.task_names.index(task)]
        return self.towers[task](torch.einsum("s,bs...->b...", row, z))

    def stitch_weights(self) -> list[Tensor]:
        """The units' current ``T x T`` matrices (row ``t``: what task ``t``'s column reads),
        detached."""
        return [unit.detach().clone() for unit in self.units]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every column's layers and every unit but the last."""
        return params(self.columns, list(self.units)[:-1])

    def parameter_owners(self) -> dict[int, str | list[str]]:
        """The towers' task, and for the last unit the task of each row."""
        owners: dict[int, str | list[str]] = {}
        for t in self.task_names:
            for p in self.towers[t].parameters():
                owners[id(p)] = t
        owners[id(self.units[-1])] = list(self.task_names)
        return owners

    def _owned(self) -> dict[str, list[nn.Module | list[nn.Parameter]]]:
        # the last unit's row t is task t's: the unit is in every task's parameters, as a
        # shared head layer is (see parameter_owners)
        return {t: [self.towers[t], [self.units[-1]]] for t in self.task_names}

    def _exclusive(self) -> dict[str, list[nn.Module | list[nn.Parameter]]]:
        return {t: [self.towers[t]] for t in self.task_names}


__all__ = ["CrossStitch"]
