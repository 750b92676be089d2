"""Figures a person can read: titles, axis labels, task names."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..training import History


def _pyplot():
    """matplotlib is imported on first use: workers that only train never pay for it."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def plot_training_curves(histories: Mapping[str, History], path: str | Path) -> Path:
    """Each fit's stop criterion per epoch on the train and stop sets (History's
    ``train_loss`` and ``stop_loss``), one panel per method, log scale.

    The criterion is the objective's ``value`` of the epoch's task losses: the mean task loss
    for a learned or moving weighting, the combined loss for a fixed form (sum, geometric...);
    never what a learned weighting's steps minimised (``train_combined``)."""
    rows, cols = _grid(len(histories))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (method, history) in zip(axes.flat, histories.items(), strict=False):
        epochs = history["epoch"]
        ax.plot(epochs, history["train_loss"], label="train set")
        ax.plot(epochs, history["stop_loss"], label="stop set")
        if history.best_epoch:
            ax.axvline(history.best_epoch, color="grey", ls=":", label="best epoch")
        ax.set_yscale("log")
        # the History holds no objective, so the label names both cases it may be
        ax.set_title(f"{method}: stop criterion per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("stop criterion\n(mean task loss, or a fixed form's combined loss)")
        ax.legend()
    for ax in list(axes.flat)[len(histories) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_task_losses(histories: Mapping[str, History], path: str | Path) -> Path:
    """Each task's stop-set loss per epoch, one panel per method."""
    rows, cols = _grid(len(histories))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (method, history) in zip(axes.flat, histories.items(), strict=False):
        for task in history.task_names:
            ax.plot(history["epoch"], history.task_column("stop_loss", task), label=task)
        ax.set_yscale("log")
        ax.set_title(f"{method}: stop-set loss per task")
        ax.set_xlabel("epoch")
        ax.set_ylabel("task loss")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(histories) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(
    x_train: np.ndarray,
    y_train: Mapping[str, np.ndarray],
    x_test: np.ndarray,
    clean: Mapping[str, np.ndarray],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
) -> Path:
    """Per task: noisy training points, the noiseless curve and each method's predictions."""
    tasks = list(clean)
    rows, cols = _grid(len(tasks))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    order = np.argsort(x_test)
    for ax, task in zip(axes.flat, tasks, strict=False):
        ax.scatter(x_train, y_train[task], s=4, color="lightgrey", label="training points")
        ax.plot(x_test[order], clean[task][order], color="black", lw=2, label="noiseless target")
        for method, outputs in predictions.items():
            ax.plot(x_test[order], outputs[task][order], lw=1.2, label=method)
        ax.set_title(task)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    axes.flat[0].legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Test-set predictions against the noiseless targets")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# with at most this many values per box the values themselves are drawn over the boxes
MAX_POINTS = 20


def _boxes_with_points(
    ax, values: list[np.ndarray], labels: list[str], max_points: int, seed: int = 0
) -> bool:
    """Boxplots of ``values``; with at most ``max_points`` values per box the values are drawn
    over the boxes (jittered) and the boxes draw no fliers, so no value is drawn twice.
    Returns whether the points were drawn."""
    points = max((len(v) for v in values), default=0) <= max_points
    ax.boxplot(values, tick_labels=labels, showfliers=not points)
    if points:
        jitter = np.random.default_rng(seed)
        for i, v in enumerate(values, start=1):
            x = i + jitter.uniform(-0.12, 0.12, len(v))
            ax.scatter(x, v, s=12, alpha=0.6, color="tab:blue", zorder=3)
    return points


def _tick_labels(ticks: np.ndarray) -> list[str]:
    """``%g`` labels of the ticks at the fewest significant digits (2 to 17, one count for the
    whole axis, so 10 and 20 read ``10``, ``20``) at which every label reads back as its tick
    within 1e-9 relative: 0.8750000000000001 is ``0.875``, and 1.05 is never ``1.1``, as it was
    when the labels only had to tell the ticks apart."""
    for digits in range(2, 18):  # 17 significant digits always read back a float
        labels = [f"{t:.{digits}g}" for t in ticks]
        if all(math.isclose(float(x), t, rel_tol=1e-9) for x, t in zip(labels, ticks, strict=True)):
            return labels
    return labels


def _readable_log_axis(axes: list, values: np.ndarray) -> None:
    """A log y-axis over ``values`` and 1 whose labels can be read: ticks at 1, 2, 5 x 10^k;
    over more than three decades at powers of ten only (every k-th, at most about eight), and
    on a range too narrow for three ticks (0.98-1.04) evenly spaced ones."""
    from matplotlib.ticker import (
        FixedFormatter,
        FixedLocator,
        LogLocator,
        MaxNLocator,
        NullFormatter,
    )

    values = values[np.isfinite(values) & (values > 0)]
    lo = min(float(values.min()), 1.0) if len(values) else 1.0
    hi = max(float(values.max()), 1.0) if len(values) else 1.0
    pad = (hi / lo) ** 0.06 if hi > lo else 1.02
    lo, hi = lo / pad, hi * pad
    decades = np.log10(hi / lo)
    if decades > 3:  # 1-2-5 in every decade would crowd the axis
        first, last = int(np.ceil(np.log10(lo))), int(np.floor(np.log10(hi)))
        stride = int(np.ceil((last - first + 1) / 8))
        ticks = 10.0 ** np.arange(first - first % stride, last + 1, stride)
    else:
        ticks = LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    if len(ticks) < 3:
        ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        ticks = ticks[(ticks >= lo) & (ticks <= hi) & (ticks > 0)]
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FixedFormatter(_tick_labels(ticks)))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_ratio_boxplots(
    ratios: pd.DataFrame,
    baseline: str,
    path: str | Path,
    metric: str = "mse",
    *,
    max_points: int = MAX_POINTS,
    task_notes: Mapping[str, str] | None = None,
) -> Path:
    """Boxplots of per-task improvement ratios on a log scale with a line at 1: one box per
    task, one panel per method, one y-axis shared by every panel.

    ``ratios`` has columns ``method, task, ratio``. With at most ``max_points`` replications
    per box the ratios are drawn over the boxes (and the boxes draw no fliers). The log axis is
    labelled so that a narrow range (0.98-1.04) can be read. ``task_notes`` (task -> its
    parameter, e.g. ``"sd 0.4"``) goes under each task's name.
    """
    methods = list(dict.fromkeys(ratios["method"]))
    rows, cols = _grid(len(methods))
    fig, axes = _pyplot().subplots(
        rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False, sharey=True
    )
    used = list(axes.flat)[: len(methods)]
    for ax, method in zip(used, methods, strict=True):
        part = ratios[ratios["method"] == method]
        tasks = list(dict.fromkeys(part["task"]))
        values = [part.loc[part["task"] == t, "ratio"].to_numpy() for t in tasks]
        notes = task_notes or {}
        labels = [f"{t}\n({notes[t]})" if t in notes else t for t in tasks]
        _boxes_with_points(ax, values, labels, max_points)
        ax.axhline(1.0, color="firebrick", ls="--", lw=1)
        n = part.groupby("task").size().min()
        ax.set_title(f"{method} vs {baseline} ({n} replications)")
        ax.set_xlabel("task")
        ax.set_ylabel(f"{metric} improvement ratio (>1: {method} better)")
        ax.yaxis.set_tick_params(labelleft=True)  # every panel keeps its labels
    _readable_log_axis(used, ratios["ratio"].to_numpy(dtype=float))
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_delta_m(
    deltas: pd.DataFrame, baseline: str, path: str | Path, *, max_points: int = MAX_POINTS
) -> Path:
    """Distribution of Delta_m% per method (lower is better): boxes, with the values drawn
    over them (and no fliers) when a method has at most ``max_points`` replications."""
    methods = list(dict.fromkeys(deltas["method"]))
    fig, ax = _pyplot().subplots(figsize=(max(4.5, 1.6 * len(methods) + 2), 4))
    values = [deltas.loc[deltas["method"] == m, "delta_m"].to_numpy() for m in methods]
    _boxes_with_points(ax, values, methods, max_points)
    ax.axhline(0.0, color="firebrick", ls="--", lw=1)
    ax.set_title(f"Delta_m% against {baseline}\nper replication (lower is better)")
    ax.set_xlabel("method")
    ax.set_ylabel("Delta_m (%)")
    fig.tight_layout()
    return _save(fig, path)


def plot_metric_curves(
    histories: Mapping[str, History], metric: str, path: str | Path, title: str = ""
) -> Path:
    """Each task's stop-set ``metric`` per epoch, one panel per task, one line per run
    (e.g. ``{"multi-task": h, "single-task": h}``); needs ``Trainer(track_metrics=True)``."""
    names = next(iter(histories.values())).task_names
    tasks = [t for t in names if any(f"stop_{metric}/{t}" in h.columns for h in histories.values())]
    if not tasks:
        raise ValueError(f"no history records stop_{metric}; fit with track_metrics=True")
    rows, cols = _grid(len(tasks))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for label, history in histories.items():
            if f"stop_{metric}/{task}" in history.columns:
                values = history[f"stop_{metric}/{task}"]
                ax.plot(history["epoch"][: len(values)], values, marker="o", ms=3, label=label)
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"stop-set {metric}")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(title or f"Per-task {metric} on the stop set")
    fig.tight_layout()
    return _save(fig, path)


def plot_gradient_norms(monitor: pd.DataFrame, path: str | Path) -> Path:
    """Gradient norm of each layer over training steps (log scale)."""
    fig, ax = _pyplot().subplots(figsize=(7.5, 4.2))
    for column in [c for c in monitor.columns if c.startswith("norm/")]:
        ax.plot(monitor["step"], monitor[column], label=column.removeprefix("norm/"))
    ax.set_yscale("log")
    ax.set_title("Gradient norm per layer (combined update)")
    ax.set_xlabel("training step")
    ax.set_ylabel("L2 norm of the gradient")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_gradient_cosines(monitor: pd.DataFrame, path: str | Path) -> Path:
    """Cosine similarity between pairs of task gradients on the shared parameters."""
    fig, ax = _pyplot().subplots(figsize=(7.5, 4.2))
    columns = [c for c in monitor.columns if c.startswith("cos/")]
    largest = float(np.nanmax(np.abs(monitor[columns].to_numpy()))) if columns else 1.0
    for column in columns:
        ax.plot(
            monitor["step"], monitor[column], label=column.removeprefix("cos/").replace("|", " vs ")
        )
    ax.axhline(0.0, color="grey", lw=1)
    limit = min(1.05, max(0.1, 1.2 * largest))  # zoom in when the cosines stay small
    ax.set_ylim(-limit, limit)
    ax.set_title("Cosine similarity of task gradients on the shared trunk")
    ax.set_xlabel("training step")
    ax.set_ylabel("cosine similarity")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_probe(probe: pd.DataFrame, path: str | Path, title: str) -> Path:
    """A probed metric over steps, shaded by the task trained at each step (forgetting)."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.2))
    for task, part in probe.groupby("task", sort=False):
        ax.plot(part["step"], part["value"], marker=".", label=f"{task} ({part['metric'].iloc[0]})")
    blocks = probe.drop_duplicates("step")
    colours = {}
    palette = _pyplot().get_cmap("Pastel1")
    for (_, row), (_, following) in zip(
        blocks.iterrows(), blocks.shift(-1).iterrows(), strict=True
    ):
        end = following["step"] if following["step"] == following["step"] else row["step"]
        colour = colours.setdefault(row["training"], palette(len(colours) % 9))
        ax.axvspan(row["step"], end, color=colour, alpha=0.5, lw=0)
    for trained, colour in colours.items():
        ax.fill_between([], [], color=colour, label=f"training {trained}")
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out metric")
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_gate_weights(
    histories: Mapping[str, History] | History, path: str | Path, title: str = ""
) -> Path:
    """Each task's mean gate weight per expert over the epochs (the ``gate/<task>/<expert>``
    columns a :class:`~polytask.training.GateMonitor` adds), stacked to 1: one panel per model
    and task. Gate collapse (one expert taking a task's whole gate) shows as one band filling
    its panel.

    Examples
    --------
    >>> import tempfile, os
    >>> from polytask.training import History
    >>> h = History(("a",), [{"epoch": e, "gate/a/0": 0.5 + e / 10, "gate/a/1": 0.5 - e / 10}
    ...                      for e in (1, 2, 3)])
    >>> plot_gate_weights({"mmoe": h}, os.path.join(tempfile.mkdtemp(), "g.png")).name
    'g.png'
    """
    if not isinstance(histories, Mapping):
        histories = {"": histories}
    panels = []
    for label, history in histories.items():
        columns: dict[str, list[tuple[int, str]]] = {}
        for name in history.columns:
            if name.startswith("gate/"):
                task, _, expert = name[len("gate/") :].rpartition("/")
                columns.setdefault(task, []).append((int(expert), name))
        panels += [(label, history, t, [c for _, c in sorted(cs)]) for t, cs in columns.items()]
    if not panels:
        raise ValueError("no gate/<task>/<expert> columns: fit with a GateMonitor callback")
    rows, cols = _grid(len(panels))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    cmap = _pyplot().get_cmap("tab20")
    for ax, (label, history, task, columns) in zip(axes.flat, panels, strict=False):
        records = [r for r in history.records if columns[0] in r]
        epochs = [r["epoch"] for r in records]
        values = np.array([[r.get(c, np.nan) for r in records] for c in columns])
        colours = [cmap(i % 20) for i in range(len(columns))]
        ax.stackplot(epochs, values, labels=[c.rsplit("/", 1)[1] for c in columns], colors=colours)
        ax.set_ylim(0, max(1.0, float(np.nansum(values, axis=0).max(initial=1.0))))
        # PLE's shared gates are recorded as "shared@<level>"
        whose = f"shared gate, level {task[7:]}" if task.startswith("shared@") else f"task {task}"
        ax.set_title(f"{label}: {whose}" if label else whose)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean gate weight (stacked)")
    axes.flat[0].legend(title="expert", fontsize="x-small", ncol=2, loc="upper right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title or "Gate weight per expert (one band = one expert)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.4 * rows)))  # half an inch for the title
    return _save(fig, path)
