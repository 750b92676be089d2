"""Single-task baselines: the same architecture trained on each task alone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from ..data import MultiTargetData, TaskData
from ..evaluation import evaluate
from ..evaluation._metrics import greater_is_better
from ..models import MultiTaskModel
from ..tasks import Task
from ..training import History, Trainer

Data = MultiTargetData | Mapping[str, TaskData]


def _only(data: Data, task: str) -> Data:
    return {task: data[task]} if isinstance(data, Mapping) else data


def single_vs_multi(
    build_model: Callable[[Sequence[Task]], MultiTaskModel],
    tasks: Sequence[Task],
    train: Data,
    stop: Data,
    test: Data,
    trainer: Trainer,
    metrics: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, float, dict[str, History]]:
    """Train one multi-task model on every task and one single-task model per task (same
    architecture: ``build_model`` with the one task), then score each on the test data.

    Parameters
    ----------
    build_model
        Builds a fresh model for the given tasks (same seed every call, for a fair start).
    metrics
        Task -> the metric compared (default: each task's first metric).

    Returns
    -------
    table
        One row per task: ``task, metric, single, multi`` (test values).
    delta_m
        Delta_m% of multi-task against single-task (lower is better; negative means the
        multi-task model beat the single-task ones on average).
    histories
        ``"multi-task"`` and ``"single-task"`` histories (the latter merged across tasks).

    Examples
    --------
    >>> import polytask as pt
    >>> from torch import nn
    >>> train, stop, test = pt.split(pt.make_hetero(2000, n_tasks=2, seed=0))
    >>> tasks = pt.regression_tasks(["task0", "task1"])
    >>> def build(tasks):
    ...     return pt.MultiTaskModel(pt.mlp(1, 8, 2), {t.name: nn.Linear(8, 1) for t in tasks})
    >>> trainer = pt.Trainer(max_epochs=2, quiet=True, device="cpu")
    >>> table, delta, histories = single_vs_multi(build, tasks, train, stop, test, trainer)
    >>> list(table["task"])
    ['task0', 'task1']
    """
    metrics = dict(metrics or {t.name: t.metrics[0] for t in tasks})
    multi_model = build_model(tasks)
    multi_history = trainer.fit(multi_model, tasks, train, stop)
    multi = evaluate(multi_model, tasks, test)
    rows, single_records = [], {}
    for task in tasks:
        model = build_model([task])
        single = dataclasses.replace(trainer, objective="sum", callbacks=())
        history = single.fit(model, [task], _only(train, task.name), _only(stop, task.name))
        score = evaluate(model, [task], _only(test, task.name))[task.name]
        metric = metrics[task.name]
        rows.append(
            {
                "task": task.name,
                "metric": metric,
                "single": score[metric],
                "multi": multi[task.name][metric],
            }
        )
        for record in history.records:
            merged = single_records.setdefault(record["epoch"], {"epoch": record["epoch"]})
            merged.update({k: v for k, v in record.items() if "/" in k})
    table = pd.DataFrame(rows)
    signs = [-1.0 if greater_is_better(m) else 1.0 for m in table["metric"]]
    relative = (table["multi"] - table["single"]) / table["single"]
    delta = float(100 * (relative * signs).mean())
    single_history = History(tuple(t.name for t in tasks), list(single_records.values()))
    return table, delta, {"multi-task": multi_history, "single-task": single_history}
