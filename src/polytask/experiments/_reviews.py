"""The reviews experiment: each site's sentences are their own dataset and task."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from ..data import Schedule, TaskData
from ..datasets import DatasetSpec, dataset
from ..datasets._reviews import reviews_splits
from ..datasets._sentiment import HIDDEN
from ..evaluation import plot_gradient_cosines, plot_gradient_norms, plot_metric_curves, plot_probe
from ..tasks import Task
from ..training import GradientMonitor, History, TaskMetricProbe, Trainer
from ._baselines import single_vs_multi
from ._report import markdown_table
from ._synthetic import experiment_trainer


@dataclass(frozen=True)
class ReviewsExperiment:
    """Three binary sentiment tasks (movie, restaurant and product reviews) and a 3-class task
    (which site a held-out sentence comes from), each from a dataset of its own, on one shared
    bag-of-words hidden layer with a head per task.

    Parameters
    ----------
    data_dir
        Folder with ``imdb_labelled.txt``, ``yelp_labelled.txt`` and
        ``amazon_cells_labelled.txt`` (``sentence<TAB>label`` lines).
    product_size
        Product-review sentences used (fewer than the others, so the size modes matter).
    site_per_source
        Sentences of each site held out for the 3-class site task.
    """

    data_dir: str | Path
    product_size: int = 300
    site_per_source: int = 200
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 12
    patience: int = 4
    sequential_epochs: int = 2
    sequential_lr: float = 1e-2
    monitor_every: int = 5
    seed: int = 0
    device: str = field(default="auto", compare=False)

    name = "reviews"

    @property
    def spec(self) -> DatasetSpec:
        """The ``reviews`` data set's description: its tasks, splits and default model."""
        return dataset(self.name)

    def tasks(self) -> list[Task]:
        return list(self.spec.tasks)

    def load(self) -> tuple[dict[str, TaskData], ...]:
        """Read, split and vectorise: train, stop and test data per task (vocabulary from the
        training sentences only; :func:`~polytask.datasets._reviews.reviews_splits`)."""
        splits = reviews_splits(
            Path(self.data_dir), self.seed, self.product_size, self.site_per_source
        )
        return splits.train, splits.stop, splits.test

    def build_model(self, tasks: Sequence[Task], n_features: int) -> nn.Module:
        """The data set's default model: a sparse bag-of-words layer and a head per task."""
        return self.spec.model((n_features,), list(tasks), self.seed)

    def trainer(self, **changes: Any) -> Trainer:
        base = experiment_trainer(
            self,
            "sum",
            self.seed,
            quiet=False,
            schedule=Schedule("round_robin", "max_size_cycle"),
            track_metrics=True,
        )
        return dataclasses.replace(base, **changes)

    def run(self, quiet: bool = False) -> dict[str, Any]:
        tasks = self.tasks()
        train, stop, test = self.load()
        n_features = next(iter(train.values())).n_features
        monitor = GradientMonitor(every=self.monitor_every)
        table, delta, histories = single_vs_multi(
            lambda chosen: self.build_model(chosen, n_features),
            tasks,
            train,
            stop,
            test,
            self.trainer(quiet=quiet, callbacks=[monitor]),
            metrics={t.name: t.metrics[0] for t in tasks},
        )
        # the site task first: its probe shows what the sentiment blocks do to it
        order = [tasks[-1], *tasks[:-1]]
        probe = TaskMetricProbe(order[:1], {order[0].name: stop[order[0].name]}, every=3)
        sequential = self.trainer(
            quiet=quiet,
            lr=self.sequential_lr,
            schedule=Schedule("sequential", "max_size"),
            max_epochs=self.sequential_epochs,
            patience=None,
            track_metrics=False,
            callbacks=[probe],
        )
        sequential_history = sequential.fit(self.build_model(order, n_features), order, train, stop)
        return {
            "table": table,
            "delta_m": delta,
            "histories": histories,
            "monitor": monitor.frame(),
            "probe": probe.frame(),
            "sequential": sequential_history,
            "sizes": {t: len(d) for t, d in train.items()},
            "vocabulary": n_features,
        }


def largest_drop(probe: pd.DataFrame) -> tuple[float, float]:
    """The probed task's value at the end of one of its own blocks, and the lowest value before
    it trains again, for the block followed by the largest drop (forgetting)."""
    if probe.empty:
        return float("nan"), float("nan")
    task = probe["task"].iloc[0]
    rows = probe[probe["task"] == task].reset_index(drop=True)
    own = rows["training"].str.split(",").map(lambda trained: task in trained)
    best = (float("nan"), float("nan"))
    for i in range(len(rows) - 1):
        if own[i] and not own[i + 1]:
            j = i + 1
            while j < len(rows) and not own[j]:
                j += 1
            low = float(rows["value"][i + 1 : j].min())
            if best[0] != best[0] or rows["value"][i] - low > best[0] - best[1]:
                best = (float(rows["value"][i]), low)
    return best


def write_reviews_report(result: dict[str, Any], experiment: ReviewsExperiment, out: Path) -> Path:
    """Tables and figures of :meth:`ReviewsExperiment.run` into ``out``; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    table: pd.DataFrame = result["table"]
    table.to_csv(out / "results.csv", index=False)
    histories: dict[str, History] = result["histories"]
    for label, history in histories.items():
        history.to_frame().to_csv(out / f"history_{label}.csv", index=False)
    result["monitor"].to_csv(out / "gradients.csv", index=False)
    result["probe"].to_csv(out / "sequential_probe.csv", index=False)
    plot_metric_curves(
        {k: histories[k] for k in ("multi-task", "single-task")},
        "f1",
        out / "f1_per_epoch.png",
        "Stop-set F1 per epoch: multi-task (round-robin, summed loss) vs single-task",
    )
    plot_metric_curves(
        {k: histories[k] for k in ("multi-task", "single-task")},
        "macro_f1",
        out / "site_macro_f1_per_epoch.png",
        "Site task: stop-set macro F1 per epoch",
    )
    plot_gradient_norms(result["monitor"], out / "gradient_norms.png")
    plot_gradient_cosines(result["monitor"], out / "gradient_cosines.png")
    plot_probe(
        result["probe"],
        out / "sequential_forgetting.png",
        "Sequential schedule: site-task macro F1 while the other tasks train",
    )
    before, after = largest_drop(result["probe"])
    lines = [
        "# reviews: multi-task vs single-task",
        "",
        f"Training sentences per task: {result['sizes']}; vocabulary {result['vocabulary']} words.",
        f"Seed {experiment.seed}; shared hidden layer of {HIDDEN} ReLU units; "
        f"Adam lr {experiment.lr}; round-robin (max_size_cycle), summed loss; early stopping "
        f"on the stop set (patience {experiment.patience}).",
        "",
        "Test metric per task (F1 for the binary tasks, macro F1 for the site task):",
        "",
        markdown_table(table),
        "",
        f"Delta_m% of multi-task against single-task: {result['delta_m']:.2f} "
        "(lower is better; negative = multi-task better on average).",
        "",
        f"Sequential schedule ({experiment.sequential_epochs} epochs, site task first, lr "
        f"{experiment.sequential_lr}): the site task's stop-set macro F1 fell from {before:.3f} "
        f"at the end of its own block to {after:.3f} while the sentiment tasks trained "
        "(forgetting through the shared layer).",
        "",
        "![F1 per epoch](f1_per_epoch.png)",
        "![site macro F1](site_macro_f1_per_epoch.png)",
        "![gradient norms](gradient_norms.png)",
        "![gradient cosines](gradient_cosines.png)",
        "![forgetting](sequential_forgetting.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
