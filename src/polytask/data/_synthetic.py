"""Built-in synthetic multi-task regression problems."""

from __future__ import annotations

import numpy as np

from ._multitarget import MultiTargetData


def task_names(n_tasks: int) -> list[str]:
    """Names of the synthetic tasks: ``task0``, ``task1``, ..."""
    return [f"task{i}" for i in range(n_tasks)]


def _inputs(n: int, n_tasks: int, seed: int) -> tuple[np.random.Generator, np.ndarray]:
    if n < 1 or n_tasks < 1:
        raise ValueError(f"n and n_tasks must be positive, got n={n}, n_tasks={n_tasks}")
    rng = np.random.default_rng(seed)
    return rng, rng.uniform(0.0, 1.0, size=(n, 1)).astype(np.float32)


def make_hetero(n: int, n_tasks: int = 5, seed: int = 0) -> MultiTargetData:
    """Same curve, growing noise: task i is ``sin(2 pi x) + N(0, sd_i)``, ``sd_i = 0.1 * 2**i``.

    ``x ~ U(0, 1)``. The noiseless ``sin(2 pi x)`` is kept as ``clean_targets``.

    Examples
    --------
    >>> data = make_hetero(100, n_tasks=3, seed=1)
    >>> data.task_names, tuple(data.x.shape)
    (('task0', 'task1', 'task2'), (100, 1))
    """
    rng, x = _inputs(n, n_tasks, seed)
    clean = np.sin(2 * np.pi * x[:, 0])
    targets, cleans = {}, {}
    for i, name in enumerate(task_names(n_tasks)):
        sd = 0.1 * 2**i
        targets[name] = (clean + rng.normal(0.0, sd, size=n)).astype(np.float32)
        cleans[name] = clean.astype(np.float32)
    return MultiTargetData(x, targets, cleans)


def make_phase(n: int, n_tasks: int = 5, seed: int = 0) -> MultiTargetData:
    """Same shape, shifted phase, no noise: task i is ``sin((2x + i / n_tasks) pi)``.

    Examples
    --------
    >>> data = make_phase(10, n_tasks=2)
    >>> bool((data.targets["task1"] == data.clean_targets["task1"]).all())
    True
    """
    _, x = _inputs(n, n_tasks, seed)
    targets = {
        name: np.sin((2 * x[:, 0] + i / n_tasks) * np.pi).astype(np.float32)
        for i, name in enumerate(task_names(n_tasks))
    }
    return MultiTargetData(x, targets, dict(targets))
