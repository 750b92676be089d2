"""The task-relatedness experiment of the MMoE paper (Ma et al., KDD 2018, section 4.1): two
synthetic regression tasks whose correlation ``p`` is set by construction, and how the gap
between shared-bottom and the gated architectures changes as ``p`` falls."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..data import MultiTargetData
from ..evaluation import evaluate
from ..tasks import Task, regression_tasks
from ..training import History
from ._census import (
    GATED,
    MULTI_TASK_MODELS,
    SINGLE_TASK,
    ArchitectureOutcome,
    _check_choices,
    build_architecture,
    compared_labels,
    fit_folder,
    gates_figure,
    resolve_baseline,
    with_labels,
)
from ._report import markdown_table
from ._synthetic import experiment_trainer, fit_or_warn, hash_config

TASKS = ("t1", "t2")


def relatedness_weights(
    correlation: float, d: int = 100, c: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``w1 = c u1`` and ``w2 = c (p u1 + sqrt(1 - p^2) u2)`` for orthonormal ``u1, u2`` drawn
    from ``seed``: their cosine is exactly ``p``.

    Examples
    --------
    >>> w1, w2 = relatedness_weights(0.5, d=20)
    >>> round(float(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2))), 12)
    0.5
    """
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"the task correlation must be in [-1, 1], got {correlation}")
    if d < 2:
        raise ValueError(f"d must be at least 2 (two orthogonal directions), got {d}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    u, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u1, u2 = u[:, 0], u[:, 1]
    return c * u1, c * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)


def make_relatedness(
    n: int,
    correlation: float,
    *,
    d: int = 100,
    m: int = 10,
    c: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
) -> MultiTargetData:
    """The MMoE paper's synthetic two-task regression with task correlation ``correlation``.

    ``x ~ N(0, I_d)``; ``y_t = w_t^T x + sum_{i=1}^m sin(alpha_i w_t^T x + beta_i) + eps_t``
    with :func:`relatedness_weights` ``w1, w2`` (cosine ``p``), ``alpha_i, beta_i ~ N(0, 1)``
    shared by the two tasks, and ``eps_t ~ N(0, noise^2)`` (the paper's ``N(0, 0.01)``,
    read as a variance). For one ``seed`` only ``p`` differs between correlations: the
    directions, sinusoids, inputs and noise are the same draws. The noiseless targets are kept
    as ``clean_targets``. The paper uses ``d = 100``, ``c = 1``, ``m = 10``.

    Examples
    --------
    >>> data = make_relatedness(500, 1.0, d=10, noise=0.0)
    >>> bool(np.allclose(data.targets["t1"], data.targets["t2"]))
    True
    """
    if n < 1 or m < 0 or noise < 0:
        raise ValueError(f"need n >= 1, m >= 0, noise >= 0; got n={n}, m={m}, noise={noise}")
    w1, w2 = relatedness_weights(correlation, d, c, seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    alpha, beta = rng.standard_normal(m), rng.standard_normal(m)
    x = rng.standard_normal((n, d))
    eps = rng.normal(0.0, noise, size=(n, 2)) if noise > 0 else np.zeros((n, 2))
    clean = {}
    for name, w in zip(TASKS, (w1, w2), strict=True):
        s = x @ w
        clean[name] = s + np.sin(np.outer(s, alpha) + beta).sum(axis=1)
    targets = {t: (clean[t] + eps[:, i]).astype(np.float32) for i, t in enumerate(TASKS)}
    return MultiTargetData(
        x.astype(np.float32), targets, {t: v.astype(np.float32) for t, v in clean.items()}
    )


def task_name(correlation: float, task: str) -> str:
    """The result-table name of ``task`` at ``correlation``, e.g. ``p=0.9:t1``."""
    return f"p={correlation:g}:{task}"


@dataclass(frozen=True)
class RelatednessExperiment:
    """For each task correlation, fresh data and one fit of every ``model/method``; test MSE
    against the noiseless targets, per correlation and task (``p=0.9:t1``).

    Data per replication: ``n_train`` training, ``n_stop`` early-stopping and ``n_test`` test
    rows of :func:`make_relatedness` (one seed for every correlation, so that only ``p``
    differs). Models as :func:`~polytask.experiments._census.build_architecture` with
    ``n_experts`` experts of ``expert_units`` units (shared-bottom: a bottom of the same total
    width).

    Examples
    --------
    >>> experiment = RelatednessExperiment(
    ...     correlations=(1.0, 0.5), models=("shared-bottom", "mmoe"), n_train=200, n_stop=100,
    ...     n_test=100, d=8, max_epochs=2, device="cpu")
    >>> outcome = experiment.run(0, quiet=True)
    >>> sorted(outcome.metrics), sorted(outcome.metrics["mmoe/mean"])
    (['mmoe/mean', 'shared-bottom/mean'], ['p=0.5:t1', 'p=0.5:t2', 'p=1:t1', 'p=1:t2'])
    """

    correlations: tuple[float, ...] = (1.0, 0.9, 0.5)
    models: tuple[str, ...] = ("shared-bottom", "mmoe", "cgc")
    methods: tuple[str, ...] = ("mean",)
    baseline: str = ""
    d: int = 100
    m: int = 10
    noise: float = 0.1
    n_train: int = 4000
    n_stop: int = 1000
    n_test: int = 2000
    n_experts: int = 8
    expert_units: int = 16
    tower_units: int = 8
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    device: str = field(default="auto", compare=False)

    name: ClassVar[str] = "relatedness"
    metric: ClassVar[str] = "mse"
    test_against: ClassVar[str] = "clean"
    known_models: ClassVar[tuple[str, ...]] = (*MULTI_TASK_MODELS, SINGLE_TASK)

    def __post_init__(self) -> None:
        from ..objectives import make_objective

        _check_choices(self.name, "models", self.models, self.known_models)
        _check_choices(self.name, "methods", self.methods, self.methods)
        for method in self.methods:
            make_objective(method)
        if not self.correlations or any(not -1 <= p <= 1 for p in self.correlations):
            raise ValueError(f"{self.name}: correlations must lie in [-1, 1]: {self.correlations}")
        object.__setattr__(
            self, "baseline", resolve_baseline(self.baseline, self.labels(), self.methods)
        )

    def labels(self) -> list[str]:
        return compared_labels(self.models, self.methods)

    def config(self) -> dict[str, Any]:
        """Everything that determines the results; ``generator`` marks a synthetic experiment
        scored against the noiseless targets, ``methods`` lists the compared labels."""
        config = dataclasses.asdict(self)
        config.pop("device")
        config["generator"] = "mmoe-relatedness"
        config["correlations"] = list(self.correlations)
        return with_labels(config, self)

    def config_hash(self) -> str:
        return hash_config({"experiment": self.name, **self.config()})

    def tasks(self) -> list[Task]:
        return regression_tasks(list(TASKS))

    def data(
        self, seed: int, correlation: float
    ) -> tuple[MultiTargetData, MultiTargetData, MultiTargetData]:
        n = self.n_train + self.n_stop + self.n_test
        data = make_relatedness(n, correlation, d=self.d, m=self.m, noise=self.noise, seed=seed)
        cuts = np.cumsum([self.n_train, self.n_stop])
        rows = np.arange(n)
        return (
            data.subset(rows[: cuts[0]]),
            data.subset(rows[cuts[0] : cuts[1]]),
            data.subset(rows[cuts[1] :]),
        )

    def _fit(
        self,
        model_name: str,
        method: str,
        tasks: Sequence[Task],
        train: MultiTargetData,
        stop: MultiTargetData,
        seed: int,
        quiet: bool,
        checkpoint: Path | None = None,
    ) -> tuple[Any, History]:
        from ..training import GateMonitor

        model = build_architecture(
            model_name,
            self.d,
            {t.name: 1 for t in tasks},
            n_experts=self.n_experts,
            expert_units=self.expert_units,
            tower_units=self.tower_units,
            seed=seed,
        )
        callbacks = [GateMonitor(stop.x[:256])] if model_name in GATED else []
        trainer = experiment_trainer(
            self, method, seed, quiet, callbacks=callbacks, checkpoint=checkpoint
        )
        label = f"{model_name}/{method}, seed {seed}"
        return model, fit_or_warn(trainer, model, tasks, train, stop, label)

    def run(
        self,
        seed: int = 0,
        *,
        methods: Sequence[str] | None = None,
        quiet: bool = False,
        checkpoint: str | Path | None = None,
    ) -> ArchitectureOutcome:
        """Every label at every correlation on data drawn from ``seed``.

        With ``checkpoint``, each fit saves its state every epoch in its own subfolder
        (``p=<correlation>_<model>_<method>``) and a second call resumes it; a finished fit is
        not trained again."""
        del methods
        outcome = ArchitectureOutcome(seed)
        tasks = self.tasks()
        for p in self.correlations:
            train, stop, test = self.data(seed, p)
            for model_name in self.models:
                fits: list[tuple[str, str, list[Task]]] = []
                if model_name == SINGLE_TASK:
                    fits = [(model_name, "mean", [t]) for t in tasks]
                else:
                    fits = [(f"{model_name}/{m}", m, tasks) for m in self.methods]
                for label, method, fitted_tasks in fits:
                    part = method if len(fitted_tasks) > 1 else fitted_tasks[0].name
                    where = fit_folder(checkpoint, f"p={p:g}", model_name, part)
                    model, history = self._fit(
                        model_name, method, fitted_tasks, train, stop, seed, quiet, where
                    )
                    key = label if len(fitted_tasks) > 1 else f"{label}:{fitted_tasks[0].name}"
                    outcome.histories[f"{key}@p={p:g}"] = history
                    scores = evaluate(model, fitted_tasks, test, against="clean")
                    per_task = outcome.metrics.setdefault(label, {})
                    per_task.update({task_name(p, t): v for t, v in scores.items()})
        return outcome


def _t_half(values: np.ndarray) -> float:
    """Half-width of the Student-t 95% interval of the mean (NaN for one value)."""
    from scipy import stats

    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def relatedness_table(
    frame: pd.DataFrame, metric: str = "mse", baseline: str | None = None
) -> pd.DataFrame:
    """From tidy results (``replication, method, task, <metric>``; tasks ``p=..:t``): per
    correlation and label, the replications, the mean over both tasks of the test metric, its
    Student-t 95% interval over replications and the median, and its geometric mean with a
    95% interval (t on the log scale: ``gmean``, ``gmean_low``, ``gmean_high``). With
    ``baseline`` (a label of the
    results), also the paired ``ratio`` label / baseline of that mean, per replication, as a
    geometric mean with its 95% interval (``ratio_low``, ``ratio_high``; t on the log scale):
    the gap between the architectures without the spread between replications' data.

    Examples
    --------
    >>> frame = pd.DataFrame({"replication": [0, 0, 1, 1] * 2, "method": ["a"] * 4 + ["b"] * 4,
    ...                       "task": ["p=1:t1", "p=1:t2"] * 4,
    ...                       "mse": [1.0, 3.0, 2.0, 2.0, 2.0, 6.0, 4.0, 4.0]})
    >>> table = relatedness_table(frame, baseline="a")
    >>> table[["correlation", "method", "n", "mean", "ratio"]].to_dict("records")
    [{'correlation': 1.0, 'method': 'a', 'n': 2, 'mean': 2.0, 'ratio': 1.0}, \
{'correlation': 1.0, 'method': 'b', 'n': 2, 'mean': 4.0, 'ratio': 2.0}]
    """
    parts = frame["task"].str.extract(r"^p=(?P<correlation>[^:]+):(?P<t>.+)$")
    if parts["correlation"].isna().any():
        raise ValueError("relatedness_table reads tasks named 'p=<correlation>:<task>'")
    tidy = frame.assign(correlation=parts["correlation"].astype(float))
    per_replication = tidy.groupby(["correlation", "method", "replication"], sort=False)[
        metric
    ].mean()
    by_label = {
        key: values.droplevel([0, 1])
        for key, values in per_replication.groupby(level=[0, 1], sort=False)
    }
    rows = []
    for (p, method), values in per_replication.groupby(level=[0, 1], sort=False):
        v = values.to_numpy(dtype=float)
        half = _t_half(v)
        row = {
            "correlation": p,
            "method": method,
            "n": len(v),
            "mean": float(v.mean()),
            "ci_low": float(v.mean() - half),
            "ci_high": float(v.mean() + half),
            "median": float(np.median(v)),
        }
        logs = np.log(v[v > 0])
        half = _t_half(logs)
        row |= {
            "gmean": float(np.exp(logs.mean())),
            "gmean_low": float(np.exp(logs.mean() - half)),
            "gmean_high": float(np.exp(logs.mean() + half)),
        }
        if (p, baseline) in by_label:
            ratios = values.droplevel([0, 1]) / by_label[(p, baseline)]
            logs = np.log(ratios.dropna().to_numpy(dtype=float))
            half = _t_half(logs)
            row |= {
                "ratio": float(np.exp(logs.mean())),
                "ratio_low": float(np.exp(logs.mean() - half)),
                "ratio_high": float(np.exp(logs.mean() + half)),
            }
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["correlation", "method"], ascending=[False, True])


def plot_relatedness(
    table: pd.DataFrame, path: str | Path, metric: str = "mse", baseline: str | None = None
) -> Path:
    """Test ``metric`` (mean of the two tasks; geometric mean over replications, log scale)
    against the task correlation, one line per label, with the 95% interval over replications
    as error bars; when the table has the paired ratios to ``baseline``
    (:func:`relatedness_table`), a second panel shows them."""
    from ..evaluation._plots import _pyplot, _save

    paired = bool("ratio" in table.columns and table["ratio"].notna().any())
    fig, axes = _pyplot().subplots(1, 2 if paired else 1, figsize=(12 if paired else 6.4, 4.4))
    axes = list(np.atleast_1d(axes))
    columns = [("gmean", "gmean_low", "gmean_high")]
    columns += [("ratio", "ratio_low", "ratio_high")] * paired
    for ax, (value, low, high) in zip(axes, columns, strict=True):
        for method, part in table.groupby("method", sort=False):
            part = part.sort_values("correlation")
            err = np.vstack([part[value] - part[low], part[high] - part[value]])
            ax.errorbar(
                part["correlation"],
                part[value],
                yerr=np.nan_to_num(err),
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xlabel("task correlation p (cosine of the task weight vectors)")
        ax.invert_xaxis()  # less related tasks to the right
    n = int(table["n"].min())
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"test {metric} vs noiseless targets (mean of 2 tasks)")
    axes[0].set_title(f"{n} replications per point: geometric mean, 95% CI")
    axes[0].legend(fontsize="small")
    if paired:
        axes[1].axhline(1.0, color="grey", linewidth=0.8)
        axes[1].set_ylabel(f"{metric} / {metric} of {baseline or 'the baseline'} (paired)")
        axes[1].set_title("paired ratio to the baseline: geometric mean, 95% CI")
    fig.suptitle("MMoE paper's synthetic two-task regression (section 4.1)")
    fig.tight_layout()
    return _save(fig, path)


def write_relatedness_report(
    outcome: ArchitectureOutcome, experiment: RelatednessExperiment, out: str | Path
) -> pd.DataFrame:
    """``results.csv`` / ``results.md`` (test MSE per correlation and label), the figure and
    each fit's history into ``out``; returns the table."""
    from ._store import tidy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = tidy([{"replication": 0, "seed": outcome.seed, "metrics": outcome.metrics}])
    frame.to_csv(out / "replications.csv", index=False)
    table = relatedness_table(frame, experiment.metric, experiment.baseline)
    table.to_csv(out / "results.csv", index=False)
    plot_relatedness(table, out / "relatedness.png", experiment.metric, experiment.baseline)
    pivot = table.pivot(index="correlation", columns="method", values="mean")
    pivot = pivot.sort_index(ascending=False).reset_index()
    text = [
        f"# relatedness: seed {outcome.seed}",
        "",
        f"Test {experiment.metric} against the noiseless targets, mean of the two tasks.",
        "",
        markdown_table(pivot),
        "",
        "![test loss against task correlation](relatedness.png)",
        "",
        *gates_figure(outcome.histories, out),
    ]
    (out / "results.md").write_text("\n".join(text))
    for label, history in outcome.histories.items():
        name = label.replace("/", "_").replace(":", "_").replace("@", "_")
        History.to_frame(history).to_csv(out / f"history_{name}.csv", index=False)
    return pivot


def write_relatedness_figure(
    frame: pd.DataFrame, out: str | Path, metric: str = "mse", baseline: str | None = None
) -> pd.DataFrame:
    """From a replicated comparison's tidy results: ``relatedness.csv`` (per correlation and
    label, the mean of the two tasks' test ``metric`` over replications with its 95% interval,
    and the paired ratio to ``baseline``) and ``relatedness.png`` (:func:`plot_relatedness`)
    into ``out``; returns the table.

    Examples
    --------
    >>> import tempfile
    >>> frame = pd.DataFrame({"replication": [0, 0, 1, 1] * 2, "method": ["a"] * 8,
    ...     "task": ["p=1:t1", "p=1:t2"] * 2 + ["p=0.5:t1", "p=0.5:t2"] * 2,
    ...     "mse": [1.0, 3.0, 2.0, 2.0, 4.0, 4.0, 5.0, 5.0]})
    >>> table = write_relatedness_figure(frame, tempfile.mkdtemp())
    >>> table[["correlation", "mean"]].to_dict("list")
    {'correlation': [1.0, 0.5], 'mean': [2.0, 4.5]}
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = relatedness_table(frame, metric, baseline)
    table.to_csv(out / "relatedness.csv", index=False)
    plot_relatedness(table, out / "relatedness.png", metric, baseline)
    return table


__all__ = [
    "RelatednessExperiment",
    "make_relatedness",
    "plot_relatedness",
    "relatedness_table",
    "relatedness_weights",
    "write_relatedness_figure",
    "write_relatedness_report",
]
