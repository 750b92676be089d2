"""The built-in synthetic data sets ``hetero`` and ``phase``: one input ``x ~ U(0, 1)``, a
regression task per column, no files (:func:`~polytask.data.make_hetero`,
:func:`~polytask.data.make_phase`).

``hetero``: task i is ``sin(2 pi x)`` with noise sd ``0.1 * 2**i``; ``phase``: task i is
``sin((2x + i / T) pi)``, no noise. Each replication draws fresh data from its seed and cuts it
1:9:10 into train, stop and test (so early stopping sees far more rows than training, as in the
geometric-loss experiments); test metrics are against the noiseless targets. The model is a
deep ReLU MLP with one linear output column per task, Glorot-initialised as Keras does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from ..data import MultiTargetData, make_hetero, make_phase, split, task_names
from ..tasks import regression_tasks
from ._spec import DatasetSpec, Splits

GENERATORS: dict[str, Callable[..., MultiTargetData]] = {"hetero": make_hetero, "phase": make_phase}
DESCRIPTIONS = {
    "hetero": "sin(2 pi x) with noise sd 0.1 * 2**i on task i (built-in synthetic data)",
    "phase": "sin((2x + i/T) pi), no noise, phase shifted per task (built-in synthetic data)",
}


def task_notes(generator: str, n_tasks: int) -> dict[str, str]:
    """Each task's parameter, for labels: its noise sd (``hetero``) or phase (``phase``).

    Examples
    --------
    >>> task_notes("hetero", 3)
    {'task0': 'sd 0.1', 'task1': 'sd 0.2', 'task2': 'sd 0.4'}
    >>> task_notes("phase", 2)
    {'task0': 'phase 0π', 'task1': 'phase 0.5π'}
    """
    if generator == "hetero":
        return {name: f"sd {0.1 * 2**i:g}" for i, name in enumerate(task_names(n_tasks))}
    return {name: f"phase {i / n_tasks:g}π" for i, name in enumerate(task_names(n_tasks))}


def column_mlp(
    width: int = 100, depth: int = 10, init: str = "glorot"
) -> Callable[[tuple[int, ...], Sequence, int], nn.Module]:
    """A :class:`DatasetSpec` ``model``: ``depth`` dense ReLU layers of ``width`` units and one
    linear output layer with a column per task (each column that task's head).

    Examples
    --------
    >>> import torch
    >>> net = column_mlp(8, 2)((1,), regression_tasks(["a", "b"]), 0)
    >>> {k: tuple(v.shape) for k, v in net(torch.zeros(3, 1)).items()}
    {'a': (3, 1), 'b': (3, 1)}
    """
    from ..models import ColumnHeads, MultiTaskModel, mlp

    def build(input_shape: tuple[int, ...], tasks: Sequence, seed: int) -> nn.Module:
        (in_features,) = input_shape
        net = mlp(in_features, width, depth, out_features=len(tasks), init=init, seed=seed)
        return MultiTaskModel(net[:-1], ColumnHeads(net[-1], {t.name: 1 for t in tasks}))

    return build


def synthetic_spec(
    generator: str = "hetero",
    n: int = 20000,
    n_tasks: int = 5,
    depth: int = 10,
    width: int = 100,
    init: str = "glorot",
    fractions: tuple[float, float, float] = (0.05, 0.45, 0.5),
) -> DatasetSpec:
    """The description of a synthetic data set of ``n`` rows and ``n_tasks`` tasks; the
    registered ``hetero`` and ``phase`` are the defaults.

    Examples
    --------
    >>> spec = synthetic_spec("phase", n=100, n_tasks=2)
    >>> splits = spec.load(Path(), 0)
    >>> len(splits.train), len(splits.stop), len(splits.test)
    (5, 45, 50)
    """
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {sorted(GENERATORS)}, got {generator}")

    def load(folder: Path, seed: int) -> Splits:
        del folder  # generated, not read
        return Splits(*split(GENERATORS[generator](n, n_tasks, seed), fractions))

    return DatasetSpec(
        name=generator,
        folder="",
        description=DESCRIPTIONS[generator],
        tasks=tuple(regression_tasks(task_names(n_tasks))),
        check=lambda folder: None,  # nothing to read
        load=load,
        model=column_mlp(width, depth, init),
        metric="mse",
        lr=1e-3,
        eps=1e-3,
        batch_size=32,
        max_epochs=500,
        patience=20,
        test_against="clean",
    )


SPECS = {generator: synthetic_spec(generator) for generator in GENERATORS}
"""The registered synthetic data sets, at their default sizes."""
