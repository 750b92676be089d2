"""One experiment protocol for every benchmark data set (:class:`DatasetExperiment`), and the
benchmark suite: data sets x methods x replications in one resumable store."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..data import MultiTargetData, TaskData
from ..datasets import DatasetSpec, Part, dataset
from ..evaluation import evaluate
from ..objectives import Objective, Weighted, make_objective
from ..tasks import Task
from ..training import Callback, History
from ._baselines import _only
from ._references import (
    BOOSTING,
    LINEAR,
    SCIKIT_LEARN_KINDS,
    TRAIN_MEAN,
    reference_metrics,
)
from ._structured import Outcome
from ._synthetic import experiment_trainer, fit_or_warn, hash_config, weighted_loss

SUITE_METHODS = (
    "mean",
    "geometric",
    "uw",
    "dwa",
    "famo",
    "mgda",
    "pcgrad",
    "cagrad",
    "upgrad",
    "nashmtl",
)
"""The optimisers every data set is run with by default (equal weighting, ``mean``, first)."""
TUNED = "tuned"
"""Static task weights searched on each replication's stop set, then fitted and tested once."""
SINGLE_TASK = "single-task"
REFERENCES = (SINGLE_TASK, LINEAR, BOOSTING)
"""Single-task references: the same network per task, scikit-learn's ridge or logistic
regression, and its histogram gradient boosting (early-stopped on the stop set)."""


def _first(part: Part) -> MultiTargetData | TaskData:
    return next(iter(part.values())) if isinstance(part, Mapping) else part


@dataclass(frozen=True)
class DatasetExperiment:
    """Every method and reference on one benchmark data set, from its declarative
    :class:`~polytask.datasets.DatasetSpec`: the same protocol for every data set.

    One replication draws the data set's splits from its seed, fits the spec's default model
    with every method of ``methods`` from the same initial weights (each early-stopped on the
    stop set by its own criterion), and tests each once. ``tuned`` searches static task
    weights on that replication's stop set with :func:`~polytask.experiments.tune` (a grid
    over the simplex for 2-3 tasks, TPE above; ``tune_trials`` fits), then fits the chosen
    weights and tests them once: no replication's test rows take part in any choice. The
    references fit one network per task (``single-task``), scikit-learn's ridge or logistic
    regression (``linear``) and histogram gradient boosting per task (on a bag of words, the
    :data:`BOOSTING_WORDS` most frequent training words only); regression data sets
    also record ``train-mean`` (predicting the training mean), for the relative RMSE.

    Parameters
    ----------
    dataset
        A data set name (:data:`polytask.datasets.DATASET_NAMES`).
    data_dir
        The folder holding the data sets' folders (``../shared/data``).
    methods
        Objective names (:func:`polytask.make_objective`) and ``tuned``.
    references
        A subset of :data:`REFERENCES`.
    baseline
        The method Delta_m% is measured against.
    budget
        At most this many epochs per fit (a quick pass); ``None``: the data set's own budget.
    tune_trials
        Fits of the weight search (a grid uses at most this many of its points).

    Examples
    --------
    >>> experiment = DatasetExperiment("energy", methods=("mean", "uw"), references=())
    >>> experiment.labels(), experiment.metric
    (['mean', 'uw', 'train-mean'], 'mse')
    """

    dataset: str
    data_dir: str | Path = ""
    methods: tuple[str, ...] = (*SUITE_METHODS, TUNED)
    references: tuple[str, ...] = REFERENCES
    baseline: str = "mean"
    budget: int | None = None
    tune_trials: int = 10
    device: str = field(default="auto", compare=False)

    known_methods: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        dataset(self.dataset)  # an unknown data set is refused here
        if not self.methods:
            raise ValueError(f"{self.dataset}: give at least one method")
        for method in self.methods:
            if method != TUNED:
                make_objective(method)  # an unknown name fails here, before any fit
        unknown = [r for r in self.references if r not in REFERENCES]
        if unknown:
            raise ValueError(f"{self.dataset}: unknown references {unknown}; known: {REFERENCES}")
        repeated = sorted(
            {m for m in (*self.methods, *self.references) if self.labels().count(m) > 1}
        )
        if repeated:
            raise ValueError(f"{self.dataset}: {repeated} named twice")
        fitted = [r for r in self.references if r in (LINEAR, BOOSTING)]
        other = [t.name for t in self.spec.tasks if t.kind not in SCIKIT_LEARN_KINDS]
        if fitted and other:  # refused here, not in a worker after the other fits
            raise ValueError(
                f"{self.dataset}: no scikit-learn reference for tasks {other} (kinds other than "
                f"{', '.join(SCIKIT_LEARN_KINDS)}); leave {fitted} out of the references"
            )
        if self.baseline not in self.methods:
            raise ValueError(
                f"{self.dataset}: the baseline {self.baseline!r} is not among {list(self.methods)}"
            )
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"{self.dataset}: the budget must be at least one epoch")
        if TUNED in self.methods and self.tune_trials < 2:
            raise ValueError(f"{self.dataset}: a weight search needs at least 2 trials")

    # -- what the replication machinery and tune() read ---------------------------------------
    @property
    def spec(self) -> DatasetSpec:
        return dataset(self.dataset)

    @property
    def name(self) -> str:
        return self.dataset

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def lr(self) -> float:
        return self.spec.lr

    @property
    def batch_size(self) -> int:
        return self.spec.batch_size

    @property
    def max_epochs(self) -> int:
        budget = self.spec.max_epochs
        return budget if self.budget is None else min(budget, self.budget)

    @property
    def patience(self) -> int:
        return self.spec.patience

    @property
    def test_against(self) -> str:
        return self.spec.test_against

    @property
    def folder(self) -> Path:
        return Path(self.data_dir) / self.spec.folder

    def labels(self) -> list[str]:
        """The compared labels, in order (``train-mean`` last, for regression)."""
        extra = [TRAIN_MEAN] if self.spec.regression else []
        return [*self.methods, *self.references, *extra]

    def config(self) -> dict[str, Any]:
        """Everything that determines the results (the device and data folder left out);
        ``methods`` lists the compared labels, as the comparison report reads them."""
        spec = self.spec
        config = dataclasses.asdict(self)
        for key in ("device", "data_dir"):
            config.pop(key)
        config["objectives"] = list(self.methods)
        config["methods"] = self.labels()
        config["references"] = list(self.references)
        config["metric"] = spec.metric
        config["training"] = {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "eps": self.spec.eps,
        }
        config["test_against"] = self.test_against
        # the data files' digests: results of other files are stored apart (and a data set
        # whose files are missing is refused later, by check_files, naming the file)
        config["data"] = spec.fingerprint(self.data_dir) if Path(self.data_dir).is_dir() else {}
        return config

    def config_hash(self) -> str:
        return hash_config({"experiment": self.name, **self.config()})

    def tasks(self) -> list[Task]:
        return list(self.spec.tasks)

    def check_files(self) -> None:
        """Validate the data set's files (the spec's ``check``) before any training."""
        self.spec.check(self.folder)

    def data(self, seed: int) -> tuple[Part, Part, Part]:
        """The replication's train, stop and test parts (preprocessing fitted on train)."""
        # the files' digests join the cache key: a file changed on disk is read again
        files = tuple(sorted(self.spec.fingerprint(self.data_dir).items()))
        splits = _load(self.dataset, str(self.folder), seed, files)
        return splits.train, splits.stop, splits.test

    def weighted(self, weights: Sequence[float] | None = None) -> Weighted:
        """The weighted task loss with one weight per task (all 1 by default), for tuning."""
        return weighted_loss([t.name for t in self.tasks()], weights)

    def build_model(self, train: Part, tasks: Sequence[Task], seed: int) -> nn.Module:
        """The spec's default model for ``tasks`` from the initial weights of ``seed``."""
        shape = tuple(_first(train).x.shape[1:])
        return self.spec.model(shape, list(tasks), seed)

    def fit(
        self,
        objective: str | Objective,
        train: Part,
        stop: Part,
        seed: int,
        quiet: bool = True,
        callbacks: Sequence[Callback] = (),
        track_metrics: bool = False,
        tasks: Sequence[Task] | None = None,
    ) -> tuple[nn.Module, History]:
        """One fit from the initial weights of ``seed`` (on ``tasks`` only, when given)."""
        tasks = list(tasks) if tasks is not None else self.tasks()
        model = self.build_model(train, tasks, seed)
        trainer = experiment_trainer(
            self,
            objective,
            seed,
            quiet,
            eps=self.spec.eps,
            callbacks=list(callbacks),
            track_metrics=track_metrics,
        )
        label = f"{self.dataset}, {objective if isinstance(objective, str) else 'weighted'}"
        return model, fit_or_warn(trainer, model, tasks, train, stop, f"{label}, seed {seed}")

    # -- one replication -----------------------------------------------------------------------
    def run(
        self, seed: int = 0, *, methods: Sequence[str] | None = None, quiet: bool = True
    ) -> Outcome:
        """Every label on the splits drawn from ``seed``; test once at the end."""
        train, stop, test = self.data(seed)
        tasks = self.tasks()
        outcome = Outcome(seed)
        for label in methods or self.labels():
            if label == TUNED:
                outcome.metrics[label] = self.tuned(seed)
            elif label == SINGLE_TASK:
                outcome.metrics[label] = {}
                for task in tasks:
                    model, history = self.fit(
                        "sum",
                        _only(train, task.name),
                        _only(stop, task.name),
                        seed,
                        quiet,
                        tasks=[task],
                    )
                    outcome.histories[f"{label}:{task.name}"] = history
                    outcome.metrics[label].update(
                        evaluate(model, [task], _only(test, task.name), against=self.test_against)
                    )
            elif label in (LINEAR, BOOSTING, TRAIN_MEAN):
                outcome.metrics[label] = self.reference(label, train, stop, test, seed)
            else:
                model, history = self.fit(label, train, stop, seed, quiet)
                outcome.histories[label] = history
                outcome.metrics[label] = evaluate(model, tasks, test, against=self.test_against)
        return outcome

    def tuned(self, seed: int) -> dict[str, dict[str, float]]:
        """Test metrics of the static weights chosen on this replication's stop set."""
        from ._tune import tune_on_stop_set

        return tune_on_stop_set(self, seed, self.tune_trials).test_metrics

    def reference(
        self, name: str, train: Part, stop: Part, test: Part, seed: int
    ) -> dict[str, dict[str, float]]:
        """One scikit-learn model per task on the same split (or the training mean), scored as
        a network's outputs are (:func:`~polytask.experiments._references.reference_metrics`)."""
        return reference_metrics(name, self.tasks(), train, stop, test, seed, self.test_against)


@functools.lru_cache(maxsize=4)
def _load(name: str, folder: str, seed: int, files: tuple) -> Any:
    """The spec's splits, cached: a replication and its weight search read them several times
    (``files``, the data files' digests, only keys the cache)."""
    return dataset(name).load(Path(folder), seed)


def suite_experiments(
    datasets: Sequence[str],
    data_dir: str | Path,
    methods: Sequence[str] = (*SUITE_METHODS, TUNED),
    references: Sequence[str] = REFERENCES,
    *,
    budget: int | None = None,
    tune_trials: int = 10,
    baseline: str = "mean",
    device: str = "auto",
) -> list[DatasetExperiment]:
    """One :class:`DatasetExperiment` per data set, each checked (names, files) before any fit;
    ``baseline`` is the method Delta_m% is measured against.

    Raises
    ------
    ValueError
        An unknown data set, method or reference, or a data set named twice.
    DataFormatError, FileNotFoundError
        A data set's file is missing or malformed (file, line and column named).
    """
    repeated = sorted({d for d in datasets if list(datasets).count(d) > 1})
    if repeated:
        raise ValueError(f"data sets {repeated} named twice")
    experiments = []
    for name in datasets:
        experiment = DatasetExperiment(
            name,
            data_dir,
            methods=tuple(methods),
            references=tuple(references),
            baseline=baseline,
            budget=budget,
            tune_trials=tune_trials,
            device=device,
        )
        experiment.check_files()
        experiments.append(experiment)
    return experiments


def suite_frames(store: Any, experiments: Sequence[DatasetExperiment], seed: int) -> dict:
    """Per data set, the tidy test metrics of this suite's replications in ``store``."""
    from ._replicate import config_hash

    return {e.name: store.frame(config_hash(e, seed)) for e in experiments}


__all__ = [
    "BOOSTING",
    "LINEAR",
    "REFERENCES",
    "SINGLE_TASK",
    "SUITE_METHODS",
    "TRAIN_MEAN",
    "TUNED",
    "DatasetExperiment",
    "suite_experiments",
    "suite_frames",
]
