"""Real-data experiments for structured losses: sentiment-domains (consistency, tuned weights)
and adult-education (a fine/coarse hierarchy). Both replicate through :func:`replicate`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from ..data import MultiTargetData
from ..datasets import DatasetSpec, dataset
from ..datasets._adult_education import EDUCATION_TO_LEVEL, education_splits
from ..datasets._sentiment_domains import domain_splits
from ..datasets._spec import folder_digests
from ..evaluation import evaluate
from ..objectives import Consistency, Hierarchical, Objective, Weighted
from ..tasks import Task
from ..training import Callback, History
from ._references import reference_metrics
from ._synthetic import experiment_trainer, fit_or_warn, hash_config, weighted_loss

Splits = tuple[MultiTargetData, MultiTargetData, MultiTargetData]
REFERENCES = ("logistic-regression", "hist-gradient-boosting")
"""Non-neural references, one scikit-learn model per task."""


@dataclass
class Outcome:
    """One replication: per method, the history and the test metrics."""

    seed: int
    histories: dict[str, History] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _DataExperiment:
    """Shared machinery: a method name -> an objective, one fit per method on the same split
    and initial weights, test metrics once at the end. Subclasses give the data and tasks."""

    data_dir: str | Path = ""
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 8
    methods: tuple[str, ...] = ()
    baseline: str = ""
    # the "tuned" method's task weights; None: searched on each replication's own stop set
    weights: tuple[float, ...] | None = None
    tune_trials: int = 10  # fits of that search
    device: str = field(default="auto", compare=False)

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "macro_f1"  # the metric comparisons and tuning read
    test_against: ClassVar[str] = "targets"

    def __post_init__(self) -> None:
        if not self.methods:
            object.__setattr__(self, "methods", self.default_methods)
        if not self.baseline:
            object.__setattr__(self, "baseline", self.methods[0])
        unknown = [m for m in self.methods if m not in self.known_methods]
        if unknown:
            raise ValueError(
                f"{self.name}: unknown methods {unknown}; known: {list(self.known_methods)}"
            )
        if self.baseline not in self.methods:
            raise ValueError(f"the baseline {self.baseline!r} is not among {list(self.methods)}")
        if "tuned" in self.methods and self.weights is None and self.tune_trials < 2:
            raise ValueError(f"{self.name}: a weight search needs at least 2 trials")
        if self.weights is not None and len(self.weights) != len(self.tasks()):
            raise ValueError(
                f"{self.name}: {len(self.weights)} weights for the tasks "
                f"{[t.name for t in self.tasks()]}"
            )
        if self.weights is not None:
            try:  # finite, non-negative, not all zero: checked here, before any fit
                Weighted(list(self.weights))
            except ValueError as error:
                raise ValueError(f"{self.name}: {error}") from None

    default_methods: ClassVar[tuple[str, ...]] = ()
    known_methods: ClassVar[tuple[str, ...]] = ()

    def config(self) -> dict[str, Any]:
        """Everything that determines the results (the device and data folder are left out)."""
        config = dataclasses.asdict(self)
        config.pop("device")
        config.pop("data_dir")
        config["methods"] = list(self.methods)
        config["weights"] = None if self.weights is None else list(self.weights)
        config["metric"] = self.metric
        config["data"] = folder_digests(self.data_dir)  # other files: stored apart
        return config

    def config_hash(self) -> str:
        return hash_config({"experiment": self.name, **self.config()})

    @property
    def spec(self) -> DatasetSpec:
        """The data set's declarative description: its tasks and default model."""
        return dataset(self.name)

    def tasks(self) -> list[Task]:
        return list(self.spec.tasks)

    # -- to be given by subclasses -------------------------------------------------------------
    def data(self, seed: int) -> Splits:
        raise NotImplementedError

    def objective(self, method: str) -> Objective:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def weighted(self, weights: Sequence[float] | None = None) -> Weighted:
        """The weighted loss with one weight per task (all 1 by default)."""
        return weighted_loss([t.name for t in self.tasks()], weights)

    def build_model(self, n_features: int, seed: int, tasks: Sequence[Task]) -> nn.Module:
        """The data set's default model (its spec's ``model``) for ``tasks``."""
        return self.spec.model((n_features,), list(tasks), seed)

    def fit(
        self,
        objective: Objective,
        train: MultiTargetData,
        stop: MultiTargetData,
        seed: int,
        quiet: bool = True,
        callbacks: Sequence[Callback] = (),
        track_metrics: bool = False,
        tasks: Sequence[Task] | None = None,
    ) -> tuple[nn.Module, History]:
        """One fit from the initial weights of ``seed`` (on ``tasks`` only, when given: a
        single-task network has the same trunk and that task's head)."""
        tasks = list(tasks) if tasks is not None else self.tasks()
        model = self.build_model(train.x.shape[1], seed, tasks)
        trainer = experiment_trainer(
            self, objective, seed, quiet, callbacks=list(callbacks), track_metrics=track_metrics
        )
        return model, fit_or_warn(trainer, model, tasks, train, stop, f"seed {seed}")

    def run(
        self, seed: int = 0, *, methods: Sequence[str] | None = None, quiet: bool = False
    ) -> Outcome:
        """Fit every method on the split drawn from ``seed``; test once at the end."""
        train, stop, test = self.data(seed)
        outcome = Outcome(seed)
        for method in methods or self.methods:
            if method in REFERENCES:
                outcome.metrics[method] = self.reference(method, train, stop, test, seed)
                continue
            if method == "tuned" and self.weights is None:
                # chosen on this replication's stop set: no replication's test rows enter it
                from ._tune import tune_on_stop_set

                result = tune_on_stop_set(self, seed, self.tune_trials)
                outcome.metrics[method] = result.test_metrics
                continue
            if method == "single-task":  # one network per task, the same trunk and head
                outcome.metrics[method] = {}
                for task in self.tasks():
                    model, history = self.fit(
                        Weighted([1.0]), train, stop, seed, quiet, tasks=[task]
                    )
                    outcome.histories[f"{method}-{task.name}"] = history
                    outcome.metrics[method].update(evaluate(model, [task], test))
                continue
            model, history = self.fit(self.objective(method), train, stop, seed, quiet)
            outcome.histories[method] = history
            outcome.metrics[method] = evaluate(model, self.tasks(), test)
        return outcome

    def reference(
        self,
        name: str,
        train: MultiTargetData,
        stop: MultiTargetData,
        test: MultiTargetData,
        seed: int,
    ) -> dict[str, dict[str, float]]:
        """A scikit-learn model per task on the same split: ``logistic-regression`` (L2, C=1)
        or ``hist-gradient-boosting`` (early-stopped on the stop rows), scored from its
        log-probabilities as a network's logits are."""
        return reference_metrics(name, self.tasks(), train, stop, test, seed)


def _positive_marginal(raw: torch.Tensor) -> torch.Tensor:
    """P(positive) of the joint (site x sentiment) head: its odd classes."""
    return torch.softmax(raw, dim=1)[:, 1::2].sum(dim=1, keepdim=True)


def _site_marginal(raw: torch.Tensor) -> torch.Tensor:
    """P(site) of the joint head: each site's two classes summed."""
    p = torch.softmax(raw, dim=1)
    return p[:, 0::2] + p[:, 1::2]


@dataclass(frozen=True)
class SentimentDomainsExperiment(_DataExperiment):
    """Every sentence of the three review sites in one dataset, one bag-of-words trunk, and
    three heads: the site (3 classes), the sentiment (binary), and their joint (6 classes,
    ``2 * site + sentiment``).

    Methods: ``weighted`` (every task weight 1), ``tuned`` (given ``weights``, e.g. those of a
    ``polytask tune`` study; without them, static weights searched on each replication's own
    stop set, :func:`~polytask.experiments._tune.tune_on_stop_set`), and ``consistency``
    (weights 1 plus a :class:`Consistency` term that ties the joint head's marginals to the
    site and sentiment heads, ``consistency`` weight).
    """

    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    min_df: int = 2
    consistency: float = 1.0

    name: ClassVar[str] = "sentiment-domains"
    default_methods: ClassVar[tuple[str, ...]] = ("weighted", "consistency")
    known_methods: ClassVar[tuple[str, ...]] = ("weighted", "tuned", "consistency")

    def data(self, seed: int) -> Splits:
        """A fresh split from ``seed`` (the ``sentiment-domains`` data set of
        :mod:`polytask.datasets`); the vocabulary comes from the training sentences."""
        splits = domain_splits(Path(self.data_dir), seed, self.fractions, self.min_df)
        return splits.train, splits.stop, splits.test

    def consistency_term(self) -> Consistency:
        """The joint head's marginals must agree with the site and sentiment heads."""
        return Consistency(
            [
                ("joint", "site", _site_marginal, None),
                ("joint", "sentiment", _positive_marginal, None),
            ],
            weight=self.consistency,
        )

    def objective(self, method: str) -> Objective:
        if method == "weighted":
            return self.weighted()
        if method == "tuned":
            return self.weighted(self.weights)
        return self.weighted() + self.consistency_term()


@dataclass(frozen=True)
class AdultEducationExperiment(_DataExperiment):
    """Education on the UCI census data as a fine task (16 levels) and a coarse one (no degree
    / high school / college / graduate, by ``EDUCATION_TO_LEVEL``), with the education
    columns removed from the inputs. Methods: ``mean`` (each task weight 1) and
    ``hierarchical`` (plus a :class:`Hierarchical` term, ``hierarchy`` weight); baselines:
    ``single-task`` (one network per task, same trunk and head) and the scikit-learn
    references ``logistic-regression`` and ``hist-gradient-boosting``, one model per task."""

    n_train: int = 4000
    n_stop: int = 4000
    n_test: int = 10000
    hierarchy: float = 1.0
    penalty: str = "kl"

    name: ClassVar[str] = "adult-education"
    default_methods: ClassVar[tuple[str, ...]] = ("mean", "hierarchical")
    known_methods: ClassVar[tuple[str, ...]] = (
        "mean",
        "tuned",
        "hierarchical",
        "single-task",
        *REFERENCES,
    )

    def data(self, seed: int) -> Splits:
        """Train and stop rows drawn from ``adult.data``, test rows from ``adult.test``;
        scaling and one-hot codes fitted on the training rows (the ``adult-education`` data
        set of :mod:`polytask.datasets`)."""
        splits = education_splits(Path(self.data_dir), seed, self.n_train, self.n_stop, self.n_test)
        return splits.train, splits.stop, splits.test

    def hierarchy_term(self) -> Hierarchical:
        return Hierarchical(
            "education", "level", EDUCATION_TO_LEVEL, weight=self.hierarchy, penalty=self.penalty
        )

    def objective(self, method: str) -> Objective:
        if method == "mean":
            return self.weighted()
        if method == "tuned":
            return self.weighted(self.weights)
        if method == "hierarchical":
            return self.weighted() + self.hierarchy_term()
        raise ValueError(f"{self.name}: {method!r} is a baseline, not a loss of the shared model")


STRUCTURED_EXPERIMENTS: dict[str, Callable[..., _DataExperiment]] = {
    "sentiment-domains": SentimentDomainsExperiment,
    "adult-education": AdultEducationExperiment,
}

DATA_DESCRIPTIONS: Mapping[str, str] = {
    "sentiment-domains": "review sentences: site, sentiment and joint heads; weights, "
    "tuned weights, consistency (--data-dir sentiment_labelled_sentences/)",
    "adult-education": "census: education (16) and its level (4); with and without the "
    "hierarchical term (--data-dir adult/)",
}


def outcome_table(outcome: Outcome, experiment: _DataExperiment) -> pd.DataFrame:
    """Test metrics, one row per method and task."""
    rows = [
        {"method": method, "task": task, **values}
        for method, per_task in outcome.metrics.items()
        for task, values in per_task.items()
    ]
    return pd.DataFrame(rows)


def write_structured_report(
    outcome: Outcome, experiment: _DataExperiment, out: str | Path
) -> pd.DataFrame:
    """Test metrics (``results.csv``) and each method's history into ``out``; returns the
    table of test metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = outcome_table(outcome, experiment)
    table.to_csv(out / "results.csv", index=False)
    for method, history in outcome.histories.items():
        history.to_frame().to_csv(out / f"history_{method}.csv", index=False)
    return table
