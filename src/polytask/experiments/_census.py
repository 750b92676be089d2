"""The MMoE paper's census-income setup on its small UCI stand-in (Adult): income > 50K and
never married, every sharing architecture against single-task networks and two scikit-learn
references; and the architecture builder the architecture experiments share."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import nn

from ..data import MultiTargetData
from ..datasets._census import (
    CENSUS_TASKS,
    CensusFormatError,
    census_encode,
    census_frames,
    check_census,
    read_census,
)
from ..datasets._spec import folder_digests
from ..evaluation import evaluate, metric_info
from ..evaluation._statistics import FEW_REPLICATIONS_NOTE, MIN_TESTABLE_N, refuse_duplicate_rows
from ..models import CGC, PLE, CrossStitch, DSelectK, MMoE, SharedBottom
from ..objectives import make_objective
from ..tasks import Task
from ..training import GateMonitor, History, Trainer
from ._references import reference_metrics
from ._report import markdown_table
from ._synthetic import experiment_trainer, fit_or_warn, hash_config

# --- architectures ---------------------------------------------------------------------------
MULTI_TASK_MODELS = ("shared-bottom", "mmoe", "cgc", "ple", "cross-stitch", "dselect-k")
"""The sharing architectures, as the CLI names them (``--models``)."""
GATED = ("mmoe", "cgc", "ple", "dselect-k")
SINGLE_TASK = "single-task"


def build_architecture(
    name: str,
    in_features: int,
    tasks: Mapping[str, int],
    *,
    n_experts: int = 8,
    expert_units: int = 16,
    tower_units: int = 8,
    seed: int = 0,
) -> nn.Module:
    """One sharing architecture, sized so that every one has about the parameters of MMoE with
    ``n_experts`` one-layer experts of ``expert_units`` units (towers of ``tower_units``).

    - ``shared-bottom``: a bottom of ``n_experts * expert_units`` units (the experts' total);
    - ``mmoe``: ``n_experts`` experts, one softmax gate per task (Ma et al., 2018);
    - ``cgc``: half the experts shared, the other half split among the tasks (Tang et al.);
    - ``ple``: two such levels (the second one reads ``expert_units``-wide inputs, so it adds
      few parameters);
    - ``cross-stitch``: one column per task of ``n_experts * expert_units / T`` units;
    - ``dselect-k``: ``n_experts`` experts, DSelect-k gates with ``k = 2``;
    - ``single-task``: one task's network, a bottom of ``n_experts * expert_units / T`` units
      (the T networks together match the others).

    Examples
    --------
    >>> model = build_architecture("mmoe", 10, {"a": 1, "b": 1}, n_experts=4, expert_units=8)
    >>> type(model).__name__, model.n_experts
    ('MMoE', 4)
    >>> build_architecture("moe", 10, {"a": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown architecture 'moe'; known: shared-bottom, mmoe, cgc, ple, ...
    """
    total, t = n_experts * expert_units, len(tasks)
    towers = [tower_units] if tower_units else []
    if name in ("shared-bottom", SINGLE_TASK):
        width = total if name == "shared-bottom" else max(1, total // max(t, 2))
        return SharedBottom.build(
            in_features, tasks, hidden=[width], tower_hidden=towers, seed=seed
        )
    if name == "mmoe":
        return MMoE(
            in_features,
            tasks,
            n_experts=n_experts,
            expert_hidden=[expert_units],
            tower_hidden=towers,
            seed=seed,
        )
    if name in ("cgc", "ple"):
        n_shared = max(1, n_experts // 2)
        n_specific = max(1, (n_experts - n_shared) // t)
        kwargs = {"n_shared": n_shared, "n_specific": n_specific, "expert_hidden": [expert_units]}
        if name == "cgc":
            return CGC(in_features, tasks, tower_hidden=towers, seed=seed, **kwargs)
        return PLE(in_features, tasks, n_levels=2, tower_hidden=towers, seed=seed, **kwargs)
    if name == "cross-stitch":
        width = max(1, total // t)
        return CrossStitch(in_features, tasks, hidden=[width], tower_hidden=towers, seed=seed)
    if name == "dselect-k":
        return DSelectK(
            in_features,
            tasks,
            n_experts=n_experts,
            k=min(2, n_experts),
            expert_hidden=[expert_units],
            tower_hidden=towers,
            seed=seed,
        )
    known = ", ".join((*MULTI_TASK_MODELS, SINGLE_TASK))
    raise ValueError(f"unknown architecture {name!r}; known: {known}")


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def compared_labels(
    models: Sequence[str], methods: Sequence[str], references: Sequence[str] = ()
) -> list[str]:
    """What a comparison compares: ``model/method`` for every multi-task model and method,
    ``single-task`` and each reference once.

    Examples
    --------
    >>> compared_labels(["shared-bottom", "mmoe", "single-task"], ["mean", "uw"])
    ['shared-bottom/mean', 'shared-bottom/uw', 'mmoe/mean', 'mmoe/uw', 'single-task']
    """
    labels = []
    for model in models:
        if model in MULTI_TASK_MODELS:
            labels += [f"{model}/{method}" for method in methods]
        else:
            labels.append(model)
    return labels


def with_labels(config: dict[str, Any], experiment: Any) -> dict[str, Any]:
    """An architecture experiment's ``config`` with what a comparison reads: the models, the
    objectives, the compared ``model/method`` labels (as ``methods``) and the metric."""
    config["models"] = list(experiment.models)
    config["objectives"] = list(experiment.methods)
    config["methods"] = experiment.labels()
    config["metric"] = experiment.metric
    return config


def resolve_baseline(baseline: str, labels: Sequence[str], methods: Sequence[str]) -> str:
    """The compared label a baseline names: a label itself, or a model name (its first method);
    an empty ``baseline`` names ``single-task`` when it is compared, else the first label.

    Examples
    --------
    >>> resolve_baseline("mmoe", ["mmoe/mean", "mmoe/uw"], ["mean", "uw"])
    'mmoe/mean'
    >>> resolve_baseline("", ["mmoe/mean", "single-task"], ["mean"])
    'single-task'
    """
    if not baseline:
        return SINGLE_TASK if SINGLE_TASK in labels else labels[0]
    if baseline in labels:
        return baseline
    if baseline in MULTI_TASK_MODELS and f"{baseline}/{methods[0]}" in labels:
        return f"{baseline}/{methods[0]}"
    raise ValueError(f"the baseline {baseline!r} is not among the compared {list(labels)}")


def _check_choices(owner: str, what: str, given: Sequence[str], known: Sequence[str]) -> None:
    if not given:
        raise ValueError(f"{owner}: give at least one {what[:-1]}")
    unknown = [g for g in given if g not in known]
    if unknown:
        raise ValueError(f"{owner}: unknown {what} {unknown}; known: {list(known)}")
    repeated = sorted({g for g in given if list(given).count(g) > 1})
    if repeated:
        raise ValueError(f"{owner}: {what} {repeated} named twice")


def fit_folder(checkpoint: str | Path | None, *parts: str) -> Path | None:
    """The checkpoint folder of one fit: ``checkpoint/<part>_<part>``, with characters that do
    not belong in a file name (``/``, ``:``, spaces) replaced; ``None`` without a checkpoint.

    Examples
    --------
    >>> fit_folder("ckpt", "mmoe", "weighted:1:2").as_posix()
    'ckpt/mmoe_weighted-1-2'
    >>> fit_folder(None, "mmoe", "mean") is None
    True
    """
    if checkpoint is None:
        return None
    name = "_".join(re.sub(r"[^A-Za-z0-9@.=+_-]", "-", part) for part in parts)
    return Path(checkpoint) / name


@dataclass
class CensusSplits:
    """The encoded train, stop and test sets, the fitted encoder and the raw frames."""

    train: MultiTargetData
    stop: MultiTargetData
    test: MultiTargetData
    encoder: Any
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


@dataclass
class ArchitectureOutcome:
    """One replication: per compared label, the histories and the test metrics."""

    seed: int
    histories: dict[str, History] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


REFERENCES = ("logistic-regression", "hist-gradient-boosting")


@dataclass(frozen=True)
class CensusExperiment:
    """Two binary tasks on the Adult census files: income > 50K and never married, with marital
    status removed from the inputs (the MMoE paper's census-income setup, Ma et al. 2018, on
    its small UCI stand-in).

    ``adult.data`` is split at random (from the replication's seed) into train and stop rows
    (``stop_fraction``); ``adult.test`` is the test set. Standardised numerics and one-hot
    categoricals are fitted on the training rows only. Each multi-task model of ``models`` is
    trained with each method of ``methods``, compared as ``model/method``; ``single-task``
    trains one network per task; ``logistic-regression`` and ``hist-gradient-boosting`` fit
    scikit-learn's models per task (the stop set is the boosting's early-stopping set). Test
    AUC per task is the metric; gated models record their gates (:class:`GateMonitor`).

    Examples
    --------
    >>> CensusExperiment(models=("mmoe", "single-task"), methods=("mean", "uw")).labels()
    ['mmoe/mean', 'mmoe/uw', 'single-task']
    """

    data_dir: str | Path = ""
    models: tuple[str, ...] = (*MULTI_TASK_MODELS, SINGLE_TASK, *REFERENCES)
    methods: tuple[str, ...] = ("mean",)
    baseline: str = ""
    n_experts: int = 8
    expert_units: int = 16
    tower_units: int = 8
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 5
    stop_fraction: float = 0.2
    n_train: int | None = None
    gate_rows: int = 512
    device: str = field(default="auto", compare=False)

    name: ClassVar[str] = "census"
    metric: ClassVar[str] = "auc"
    test_against: ClassVar[str] = "targets"
    known_models: ClassVar[tuple[str, ...]] = (*MULTI_TASK_MODELS, SINGLE_TASK, *REFERENCES)

    def __post_init__(self) -> None:
        _check_choices(self.name, "models", self.models, self.known_models)
        _check_choices(self.name, "methods", self.methods, self.methods)
        for method in self.methods:
            make_objective(method)  # an unknown name fails here, before any fit
        object.__setattr__(
            self, "baseline", resolve_baseline(self.baseline, self.labels(), self.methods)
        )
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"{self.name}: n_train must be positive, got {self.n_train}")
        if not 0 < self.stop_fraction < 1:
            raise ValueError(f"{self.name}: stop_fraction must be in (0, 1)")

    def labels(self) -> list[str]:
        """The compared labels, in order."""
        return compared_labels(self.models, self.methods)

    def config(self) -> dict[str, Any]:
        """Everything that determines the results (the device and data folder left out);
        ``methods`` lists the compared labels, as the comparison report reads them."""
        config = dataclasses.asdict(self)
        config.pop("device")
        config.pop("data_dir")
        config["data"] = folder_digests(self.data_dir)  # other files: stored apart
        return with_labels(config, self)

    def config_hash(self) -> str:
        return hash_config({"experiment": self.name, **self.config()})

    def tasks(self) -> list[Task]:
        return list(CENSUS_TASKS)

    # -- data --------------------------------------------------------------------------------
    def frames(self, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """The train, stop and test rows (validated files; train/stop drawn from ``seed``)."""
        return census_frames(self.data_dir, seed, self.stop_fraction, self.n_train)

    def prepare(self, seed: int) -> CensusSplits:
        """Encode the three sets with scaling and one-hot codes fitted on the training rows."""
        frames = self.frames(seed)
        (train, stop, test), encoder = census_encode(frames)
        return CensusSplits(train, stop, test, encoder, frames)

    def data(self, seed: int) -> tuple[MultiTargetData, MultiTargetData, MultiTargetData]:
        splits = self.prepare(seed)
        return splits.train, splits.stop, splits.test

    # -- fits --------------------------------------------------------------------------------
    def build(self, model: str, in_features: int, tasks: Sequence[Task], seed: int) -> nn.Module:
        return build_architecture(
            model,
            in_features,
            {t.name: t.size for t in tasks},
            n_experts=self.n_experts,
            expert_units=self.expert_units,
            tower_units=self.tower_units,
            seed=seed,
        )

    def trainer(
        self,
        method: str,
        seed: int,
        quiet: bool,
        callbacks: Sequence[Any] = (),
        checkpoint: str | Path | None = None,
    ) -> Trainer:
        return experiment_trainer(
            self, method, seed, quiet, callbacks=list(callbacks), checkpoint=checkpoint
        )

    def fit_model(
        self,
        model_name: str,
        method: str,
        tasks: Sequence[Task],
        train: MultiTargetData,
        stop: MultiTargetData,
        seed: int,
        quiet: bool = True,
        checkpoint: str | Path | None = None,
    ) -> tuple[nn.Module, History]:
        """One fit of one architecture and method from the initial weights of ``seed``; gated
        models record their gates on the first ``gate_rows`` stop rows. With ``checkpoint``
        (a folder of this fit's own) the fit saves its state every epoch and resumes from it."""
        model = self.build(model_name, train.x.shape[1], tasks, seed)
        callbacks = [GateMonitor(stop.x[: self.gate_rows])] if model_name in GATED else []
        trainer = self.trainer(method, seed, quiet, callbacks, checkpoint)
        history = fit_or_warn(trainer, model, tasks, train, stop, f"{model_name}/{method}, {seed}")
        return model, history

    def check_files(self) -> None:
        """Read and validate both files (:func:`read_census`): a malformed file is refused,
        naming the file, line and column, before any training."""
        check_census(Path(self.data_dir))

    def run(
        self,
        seed: int = 0,
        *,
        methods: Sequence[str] | None = None,
        quiet: bool = False,
        checkpoint: str | Path | None = None,
    ) -> ArchitectureOutcome:
        """Every compared label on the split drawn from ``seed``; test once at the end.

        With ``checkpoint``, each neural fit saves its state every epoch in its own subfolder
        (``<model>_<method>``, ``single-task_<task>``) and a second call resumes each fit where
        it stopped; a finished fit is not trained again (the references are refitted: they are
        deterministic)."""
        del methods  # the labels come from the models and methods of the experiment
        splits = self.prepare(seed)
        tasks = self.tasks()
        outcome = ArchitectureOutcome(seed)
        for model_name in self.models:
            if model_name in REFERENCES:
                outcome.metrics[model_name] = self.reference(model_name, splits, seed)
            elif model_name == SINGLE_TASK:
                outcome.metrics[model_name] = {}
                for task in tasks:
                    where = fit_folder(checkpoint, model_name, task.name)
                    model, history = self.fit_model(
                        model_name, "mean", [task], splits.train, splits.stop, seed, quiet, where
                    )
                    outcome.histories[f"{model_name}:{task.name}"] = history
                    outcome.metrics[model_name].update(evaluate(model, [task], splits.test))
            else:
                for method in self.methods:
                    label = f"{model_name}/{method}"
                    where = fit_folder(checkpoint, model_name, method)
                    model, history = self.fit_model(
                        model_name, method, tasks, splits.train, splits.stop, seed, quiet, where
                    )
                    outcome.histories[label] = history
                    outcome.metrics[label] = evaluate(model, tasks, splits.test)
        return outcome

    def reference(self, name: str, splits: CensusSplits, seed: int) -> dict[str, dict[str, float]]:
        """A scikit-learn model per task: logistic regression (L2, C=1) or histogram gradient
        boosting (early-stopped on the stop set); test metrics from its logits."""
        return reference_metrics(name, self.tasks(), splits.train, splits.stop, splits.test, seed)


# --- the report -----------------------------------------------------------------------------
def delta_m_against(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]], baseline: str, metric: str = "auc"
) -> dict[str, float]:
    """Delta_m% of every label against ``baseline`` on ``metric``, signed by the metric's
    registered direction (``polytask.evaluation.metric_info``; an unknown one is refused): a
    change for the worse counts positive, so lower Delta_m% is better for AUC and MSE alike.

    Examples
    --------
    >>> m = {"st": {"a": {"auc": 0.8}}, "mt": {"a": {"auc": 0.88}}}
    >>> round(delta_m_against(m, "st")["mt"], 6)
    -10.0
    >>> m = {"st": {"a": {"mse": 0.8}}, "mt": {"a": {"mse": 0.88}}}
    >>> round(delta_m_against(m, "st", "mse")["mt"], 6)
    10.0
    """
    sign = -1.0 if metric_info(metric).greater_is_better else 1.0
    base = metrics[baseline]
    return {
        label: 100.0
        * float(np.mean([sign * (v[t][metric] - base[t][metric]) / base[t][metric] for t in base]))
        for label, v in metrics.items()
    }


def outcome_table(outcome: ArchitectureOutcome, experiment: CensusExperiment) -> pd.DataFrame:
    """One row per compared label: test AUC per task and Delta_m% against the baseline."""
    deltas = delta_m_against(outcome.metrics, experiment.baseline, experiment.metric)
    rows = []
    for label, per_task in outcome.metrics.items():
        row: dict[str, Any] = {"model/method": label}
        for task, values in per_task.items():
            row[f"test {experiment.metric} ({task})"] = values[experiment.metric]
        row[f"Delta_m% vs {experiment.baseline}"] = deltas[label]
        rows.append(row)
    return pd.DataFrame(rows)


def write_census_report(
    outcome: ArchitectureOutcome, experiment: CensusExperiment, out: str | Path
) -> pd.DataFrame:
    """``results.csv`` / ``results.md`` (test AUC per task, Delta_m%), each fit's history and
    ``gates.png`` (the gated models' gates per epoch) into ``out``; returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = outcome_table(outcome, experiment)
    table.to_csv(out / "results.csv", index=False)
    lines = [
        f"# census: seed {outcome.seed}",
        "",
        "Test AUC per task on adult.test; Delta_m% against "
        f"{experiment.baseline} (lower is better).",
        "",
        markdown_table(table),
        "",
    ]
    lines += gates_figure(outcome.histories, out)
    (out / "results.md").write_text("\n".join(lines))
    for label, history in outcome.histories.items():
        name = label.replace("/", "_").replace(":", "_")
        history.to_frame().to_csv(out / f"history_{name}.csv", index=False)
    return table


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    """Student-t 95% interval of the mean (NaN with fewer than two values)."""
    from scipy import stats

    if len(values) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def census_summary(
    frame: pd.DataFrame, metric: str = "auc", against: str = "shared-bottom/mean"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From a replicated comparison's tidy results (``replication, method, task, <metric>``):

    - per label and task, the mean test ``metric`` over replications with its Student-t 95%
      interval (an undefined score is left out of both and counted in ``n_missing``; a
      repeated ``(replication, method, task)`` row is refused);
    - per label other than ``against`` and task, the paired difference ``label - against``
      (mean, 95% interval, replications where the label is higher, ``n_test`` the non-zero
      differences the Wilcoxon test ranks, having dropped the zero ones, and its p), when
      ``against`` is compared (else an empty table).

    Examples
    --------
    >>> frame = pd.DataFrame({"replication": [0, 0, 1, 1, 2, 2], "task": ["a"] * 6,
    ...     "method": ["sb", "mmoe"] * 3, "auc": [0.80, 0.81, 0.82, 0.82, 0.78, 0.80]})
    >>> means, paired = census_summary(frame, against="sb")
    >>> means[["method", "n", "mean"]].round(4).to_dict("records")
    [{'method': 'sb', 'n': 3, 'mean': 0.8}, {'method': 'mmoe', 'n': 3, 'mean': 0.81}]
    >>> paired[["method", "mean difference", "higher"]].round(4).to_dict("records")
    [{'method': 'mmoe', 'mean difference': 0.01, 'higher': '2 of 3'}]
    """
    from scipy import stats

    refuse_duplicate_rows(frame)
    rows = []
    for (method, task), part in frame.groupby(["method", "task"], sort=False):
        values = part[metric].to_numpy(dtype=float)
        # an undefined score (one class in a test split) is left out and counted, not averaged
        finite = values[np.isfinite(values)]
        low, high = _t_interval(finite)
        rows.append(
            {
                "method": method,
                "task": task,
                "n": len(finite),
                "n_missing": len(values) - len(finite),
                "mean": float(finite.mean()) if len(finite) else float("nan"),
                "ci_low": low,
                "ci_high": high,
            }
        )
    means = pd.DataFrame(rows)
    paired_rows = []
    if against in set(frame["method"]):
        wide = frame.pivot(index=["replication", "task"], columns="method", values=metric)
        for method in [m for m in frame["method"].unique() if m != against]:
            for task in frame["task"].unique():
                both = wide.xs(task, level="task")[[method, against]].dropna()
                diff = (both[method] - both[against]).to_numpy(dtype=float)
                if len(diff) == 0:
                    continue
                low, high = _t_interval(diff)
                nonzero = diff[diff != 0]
                p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) > 0 else 1.0
                paired_rows.append(
                    {
                        "method": method,
                        "task": task,
                        "n": len(diff),
                        "mean difference": float(diff.mean()),
                        "ci_low": low,
                        "ci_high": high,
                        "higher": f"{int((diff > 0).sum())} of {len(diff)}",
                        "n_test": len(nonzero),
                        "wilcoxon_p": p,
                    }
                )
    return means, pd.DataFrame(paired_rows)


def census_section(
    frame: pd.DataFrame,
    out: str | Path,
    metric: str = "auc",
    histories: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The census part of a comparison's report: ``census_means.csv`` and
    ``census_vs_shared_bottom.csv`` (:func:`census_summary`) into ``out``, and with
    ``histories`` (one replication's, as stored: label -> ``History.to_dict()``) ``gates.png``,
    the gated models' mean gate weight per expert over the epochs; returns Markdown tables of
    both summaries (one row per label, one column per task) and the figure's link."""
    out = Path(out)
    means, paired = census_summary(frame, metric)
    means.to_csv(out / "census_means.csv", index=False)
    paired.to_csv(out / "census_vs_shared_bottom.csv", index=False)

    def cells(table: pd.DataFrame, value: str) -> pd.DataFrame:
        text = table.assign(
            cell=[
                f"{v:.4f} [{a:.4f}, {b:.4f}]"
                for v, a, b in zip(table[value], table["ci_low"], table["ci_high"], strict=True)
            ]
        )
        wide = text.pivot(index="method", columns="task", values="cell")
        order = list(dict.fromkeys(table["method"]))
        return wide.loc[order].reset_index()

    lines = [
        "",
        f"## Test {metric} per task: mean over replications [Student-t 95% CI]",
        "",
        markdown_table(cells(means, "mean")),
        "",
    ]
    missing = means[means["n_missing"] > 0]
    if not missing.empty:
        listed = ", ".join(f"{r.method} on {r.task}: {r.n_missing}" for r in missing.itertuples())
        lines += [f"Undefined scores left out (and out of the pairs): {listed}.", ""]
    # the paired test drops zero differences: fewer than six non-zero ones cannot give p < 0.05
    few_pairs = not paired.empty and paired["n_test"].min() < MIN_TESTABLE_N
    if few_pairs or (len(means) and means["n"].min() < MIN_TESTABLE_N):
        lines += [f"{FEW_REPLICATIONS_NOTE}.", ""]
    if not paired.empty:
        wins = paired.pivot(index="method", columns="task", values="higher")
        wins.columns = [f"higher ({t})" for t in wins.columns]
        p_values = paired.pivot(index="method", columns="task", values="wilcoxon_p")
        p_values.columns = [f"Wilcoxon p ({t})" for t in p_values.columns]
        table = cells(paired, "mean difference").set_index("method")
        table = table.join(wins).join(p_values).reset_index()
        lines += [
            f"## Paired against shared-bottom/mean: {metric} difference [95% CI]",
            "",
            "Positive: the model scored higher than shared-bottom on the same replication "
            "(same split, seed and budget).",
            "",
            markdown_table(table),
            "",
        ]
    lines += gates_figure(histories or {}, out, "first replication")
    return "\n".join(lines)


def gates_figure(
    histories: Mapping[str, History | Mapping[str, Any]], out: Path, which: str = ""
) -> list[str]:
    """``gates.png`` in ``out``, the gated models' mean gate weight per expert over the epochs
    (:func:`~polytask.evaluation.plot_gate_weights`), from histories (or their stored
    dicts); returns the Markdown lines that show it, none when no model recorded gates."""
    from ..evaluation import plot_gate_weights

    loaded = {
        label: h if isinstance(h, History) else History.from_dict(dict(h))
        for label, h in histories.items()
    }
    gated = {
        label: h
        for label, h in loaded.items()
        if any(k.startswith("gate/") for r in h.records for k in r)
    }
    if not gated:
        return []
    plot_gate_weights(gated, out / "gates.png", "Mean gate weight per expert (stop rows)")
    heading = f"## Gates ({which})" if which else "## Gates"
    caption = f"gate weights per expert, {which}" if which else "gate weights per expert"
    return [heading, "", f"![{caption}](gates.png)", ""]


def census_parameter_counts(in_features: int = 105, **sizes: int) -> dict[str, int]:
    """Trainable parameters of every architecture at the census sizes (two binary tasks).

    Examples
    --------
    >>> counts = census_parameter_counts()
    >>> 0.8 < counts["mmoe"] / counts["shared-bottom"] < 1.25
    True
    """
    tasks = {"income": 1, "never_married": 1}
    counts = {
        name: n_parameters(build_architecture(name, in_features, tasks, **sizes))
        for name in MULTI_TASK_MODELS
    }
    single = build_architecture(SINGLE_TASK, in_features, {"income": 1}, **sizes)
    counts[SINGLE_TASK] = 2 * n_parameters(single)
    return counts


__all__ = [
    "MULTI_TASK_MODELS",
    "ArchitectureOutcome",
    "CensusExperiment",
    "CensusFormatError",
    "build_architecture",
    "census_section",
    "census_summary",
    "compared_labels",
    "read_census",
    "write_census_report",
]
