"""The heteroscedastic and phase-shift experiments on built-in synthetic data."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..data import MultiTargetData
from ..datasets import DatasetSpec
from ..datasets._synthetic import synthetic_spec
from ..evaluation import evaluate, metric_info, predict
from ..models import MultiTaskModel
from ..objectives import Objective, Weighted, make_objective
from ..tasks import Task
from ..training import Callback, History, NonFiniteLossError, Trainer

_spec = functools.lru_cache(maxsize=16)(synthetic_spec)  # one spec per experiment size


def hash_config(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration."""
    text = json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_name(text: str) -> str:
    """``text`` with the characters that do not belong in a folder name replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9@.=+_-]", "-", text)


def weighted_loss(names: Sequence[str], weights: Sequence[float] | None = None) -> Weighted:
    """``Weighted`` with one weight per task in ``names`` order, all 1 by default."""
    return Weighted(dict(zip(names, weights or [1.0] * len(names), strict=True)))


def experiment_trainer(
    experiment: Any, objective: str | Objective, seed: int, quiet: bool, **options: Any
) -> Trainer:
    """A :class:`Trainer` with an experiment's own settings (its ``lr``, ``batch_size``,
    ``max_epochs``, ``patience`` and ``device``) for one fit from ``seed``; ``options`` are the
    Trainer's other arguments (callbacks, checkpoint, ...)."""
    return Trainer(
        make_objective(objective) if isinstance(objective, str) else objective,
        lr=experiment.lr,
        batch_size=experiment.batch_size,
        max_epochs=experiment.max_epochs,
        patience=experiment.patience,
        seed=seed,
        device=experiment.device,
        quiet=quiet,
        **options,
    )


def fit_or_warn(
    trainer: Trainer,
    model: MultiTaskModel,
    tasks: Sequence[Task],
    train: MultiTargetData,
    stop: MultiTargetData,
    label: str,
) -> History:
    """``trainer.fit``, except that a fit that diverges warns and returns its history: the model
    holds the best weights so far, so a diverged method is scored, not fatal to a comparison of
    many replications."""
    try:
        return trainer.fit(model, tasks, train, stop)
    except NonFiniteLossError as error:
        warnings.warn(f"{label}: {error}", RuntimeWarning, stacklevel=3)
        return error.history


@dataclass(frozen=True)
class SyntheticExperiment:
    """One fit per method of a deep MLP on a synthetic multi-task regression problem.

    The model is the classic one: input 1 -> ``depth`` dense ReLU layers of ``width`` units ->
    one linear output with a column per task, Glorot-initialised as Keras does. Every method
    is fitted on the same data, split and initial weights; test MSE is measured against the
    noiseless targets.

    Examples
    --------
    >>> experiment = SyntheticExperiment("hetero", n=200, n_tasks=2, max_epochs=2)
    >>> result = experiment.run(seed=0, quiet=True)
    >>> sorted(result.metrics)
    ['geometric', 'mse']
    """

    generator: str = "hetero"
    n: int = 20000
    n_tasks: int = 5
    depth: int = 10
    width: int = 100
    init: str = "glorot"
    batch_size: int = 32
    lr: float = 1e-3
    eps: float = 1e-3
    max_epochs: int = 500
    patience: int = 20
    fractions: tuple[float, float, float] = (0.05, 0.45, 0.5)
    methods: tuple[str, ...] = ("mse", "geometric")
    baseline: str = "mse"
    precision: str = "32"
    device: str = field(default="auto", compare=False)

    def __post_init__(self) -> None:
        _ = self.spec  # an unknown generator is refused here
        if not self.methods:
            raise ValueError("an experiment needs at least one method")
        for method in self.methods:
            make_objective(method)  # fail on a bad name before any fit
        if self.baseline not in self.methods:
            raise ValueError(f"the baseline {self.baseline!r} is not among {list(self.methods)}")

    @property
    def name(self) -> str:
        return self.generator

    @property
    def spec(self) -> DatasetSpec:
        """The data set of this experiment's size (:mod:`polytask.datasets`: its data, tasks
        and model)."""
        return _spec(
            self.generator, self.n, self.n_tasks, self.depth, self.width, self.init, self.fractions
        )

    def config(self) -> dict[str, Any]:
        """Everything that determines the results (the device is left out)."""
        config = dataclasses.asdict(self)
        config.pop("device")
        config["fractions"] = list(self.fractions)
        config["methods"] = list(self.methods)
        return config

    def config_hash(self) -> str:
        """A short stable hash of :meth:`config`."""
        return hash_config(self.config())

    def tasks(self) -> list[Task]:
        return list(self.spec.tasks)

    def data(self, seed: int) -> tuple[MultiTargetData, MultiTargetData, MultiTargetData]:
        """Fresh data drawn from ``seed``, split into train, stop and test."""
        splits = self.spec.load(Path(), seed)
        return splits.train, splits.stop, splits.test

    def build_model(self, seed: int) -> MultiTaskModel:
        return self.spec.model((1,), self.tasks(), seed)

    metric: ClassVar[str] = "mse"  # what comparisons and tuning read
    test_against: ClassVar[str] = "clean"  # test metrics against the noiseless targets
    known_methods: ClassVar[tuple[str, ...]] = ()  # every objective name is a method here

    def weighted(self, weights: Sequence[float] | None = None) -> Weighted:
        """The weighted MSE with one weight per task (all 1 by default), for tuning."""
        return weighted_loss([t.name for t in self.tasks()], weights)

    def fit(
        self,
        method: str | Objective,
        train: MultiTargetData,
        stop: MultiTargetData,
        seed: int,
        quiet: bool,
        callbacks: Sequence[Callback] = (),
        track_metrics: bool = False,
        checkpoint: str | Path | None = None,
    ) -> tuple[MultiTaskModel, History]:
        """One fit of ``method`` (a name or an objective) from the initial weights of ``seed``;
        with ``checkpoint`` (this fit's own folder) it saves every epoch and resumes from it."""
        model = self.build_model(seed)
        trainer = experiment_trainer(
            self,
            method,
            seed,
            quiet,
            eps=self.eps,
            callbacks=list(callbacks),
            track_metrics=track_metrics,
            checkpoint=checkpoint,
            precision=self.precision,
        )
        label = f"{method if isinstance(method, str) else type(method).__name__}, seed {seed}"
        return model, fit_or_warn(trainer, model, self.tasks(), train, stop, label)

    def run(
        self,
        seed: int = 0,
        *,
        methods: Sequence[str] | None = None,
        quiet: bool = False,
        checkpoint: str | Path | None = None,
    ) -> RunResult:
        """Fit every method on the same data drawn from ``seed``; test once at the end.

        With ``checkpoint``, each method's fit saves its state every epoch in its own subfolder
        (the method's name) and a second call resumes it; a finished fit is not trained again.
        """
        train, stop, test = self.data(seed)
        tasks = self.tasks()
        result = RunResult(self, seed, train, test)
        for method in methods or self.methods:
            where = None if checkpoint is None else Path(checkpoint) / _file_name(method)
            model, history = self.fit(method, train, stop, seed, quiet, checkpoint=where)
            result.histories[method] = history
            result.metrics[method] = evaluate(model, tasks, test, against="clean")
            result.predictions[method] = predict(model, tasks, test.x)
        return result


@dataclass
class RunResult:
    """The outcome of one run: per method, the history, test metrics and test predictions."""

    experiment: SyntheticExperiment
    seed: int
    train: MultiTargetData
    test: MultiTargetData
    histories: dict[str, History] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def ratios(self, metric: str = "mse") -> dict[str, dict[str, float]]:
        """Per task, the improvement ratio of the test metric for each other method:
        ``baseline / method`` for a lower-is-better metric (MSE), ``method / baseline`` for a
        higher-is-better one (accuracy), so that above 1 the method beat the baseline on that
        task whatever the metric; an unknown metric is refused.
        """
        greater = metric_info(metric).greater_is_better  # the registry's direction, not a guess
        base = self.metrics[self.experiment.baseline]
        return {
            method: {
                task: (values[task][metric] / base[task][metric])
                if greater
                else (base[task][metric] / values[task][metric])
                for task in values
            }
            for method, values in self.metrics.items()
            if method != self.experiment.baseline
        }


EXPERIMENTS: dict[str, Callable[[], SyntheticExperiment]] = {
    "hetero": lambda: SyntheticExperiment("hetero"),
    "phase": lambda: SyntheticExperiment("phase"),
}

DESCRIPTIONS: dict[str, str] = {
    "hetero": "sin(2 pi x) with noise sd 0.1 * 2**i on task i; mse vs geometric loss",
    "phase": "sin((2x + i/T) pi), no noise, phase shifted per task; mse vs geometric loss",
}
