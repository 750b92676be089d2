"""Issue #12: partial multilabel targets, statistics that say what they measure, readable figures.

Property tests check the numeric parts against independent computations (numpy, scipy.stats).
"""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import polytask as pt
from polytask.datasets._synthetic import task_notes

# -- multilabel losses with missing labels ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, (6, 3), elements=st.floats(-6, 6)),
    hnp.arrays(np.bool_, (6, 3)),
    hnp.arrays(np.bool_, (6, 3)),
)
def test_multilabel_loss_is_the_mean_bce_over_known_labels(logits, labels, holes):
    """Against numpy: -mean(y log s(z) + (1-y) log s(-z)) over the known labels only."""
    assume(not holes.all())
    target = np.where(holes, np.nan, labels.astype(float))
    task = pt.Task("m", kind="multilabel", size=3, allow_missing=True)
    prepared, known = task.prepare(torch.from_numpy(target), "train")
    assert known.numpy().tolist() == (~holes.all(axis=1)).tolist()
    z, y = logits[~holes], labels[~holes]
    expected = -np.mean(y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z))
    got = task.compute_loss(torch.from_numpy(logits), prepared.double(), known)
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_training_with_partial_multilabel_targets_masks_each_label(rng):
    """The trainer's stop loss of a multilabel task is the BCE over the known labels."""
    n = 48
    x = rng.normal(size=(n, 3)).astype(np.float32)
    labels = (x[:, :2] > 0).astype(np.float32)
    y = labels.copy()
    y[::2, 1] = np.nan  # half the rows miss label 1
    y[5] = np.nan  # and one row misses both
    data = pt.MultiTargetData(x, {"m": y})
    task = pt.Task("m", kind="multilabel", size=2, allow_missing=True)
    model = pt.MultiTaskModel(nn.Linear(3, 4), {"m": nn.Linear(4, 2)})
    trainer = pt.Trainer("sum", max_epochs=2, patience=None, quiet=True, device="cpu")
    history = trainer.fit(model, [task], data, data)
    with torch.no_grad():
        logits = model(torch.from_numpy(x), task="m")
    known = torch.from_numpy(~np.isnan(y))
    expected = F.binary_cross_entropy_with_logits(logits[known], torch.from_numpy(labels)[known])
    assert history.records[-1]["stop_loss/m"] == pytest.approx(float(expected), rel=1e-4)


# -- figures: readable log ticks, points over few boxes, a shared y-axis, no double outliers ----


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """Each figure a plot function builds (Agg backend), kept open instead of saved."""
    from polytask.evaluation import _plots

    built = []

    def keep(fig, path):
        built.append(fig)
        return tmp_path / "unsaved.png"

    monkeypatch.setattr(_plots, "_save", keep)
    yield built
    for fig in built:
        _plots._pyplot().close(fig)


def ratio_frame(values: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    rows = [
        {"replication": r, "method": m, "task": t, "ratio": v}
        for m, per_task in values.items()
        for t, ratios in per_task.items()
        for r, v in enumerate(ratios)
    ]
    return pd.DataFrame(rows)


def labelled_ticks(ax):
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    return [
        (tick.get_loc(), tick.label1.get_text())
        for tick in ax.yaxis.get_major_ticks()
        if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()
    ]


def markers_drawn(ax):
    """Line2D markers with data: boxplot fliers (whiskers, caps and medians have none)."""
    return sum(
        len(line.get_xdata()) for line in ax.lines if line.get_marker() not in ("None", "", None)
    )


def scatter_points(ax):
    return sum(len(c.get_offsets()) for c in ax.collections)


def test_narrow_log_range_gets_several_readable_ticks(figures):
    rng = np.random.default_rng(0)
    frame = ratio_frame({"new": {"t": list(rng.uniform(0.98, 1.04, 10))}})
    pt.evaluation.plot_ratio_boxplots(frame, "base", "unused.png")
    ticks = labelled_ticks(figures[0].axes[0])
    texts = [text for _, text in ticks]
    assert len(ticks) >= 3 and len(set(texts)) == len(texts), ticks
    for loc, text in ticks:  # each label reads its tick's value
        assert float(text.replace("\N{MINUS SIGN}", "-")) == pytest.approx(loc, rel=5e-3)


def test_wide_log_range_keeps_one_two_five_ticks(figures):
    frame = ratio_frame({"new": {"t": [0.3, 0.5, 1.0, 2.0, 8.0, 30.0]}})
    pt.evaluation.plot_ratio_boxplots(frame, "base", "unused.png")
    texts = [text for _, text in labelled_ticks(figures[0].axes[0])]
    assert {"0.5", "1", "2", "5", "10", "20"} <= set(texts)


@pytest.mark.parametrize("exponent", [3, 6, 12])
def test_a_very_wide_log_range_gets_a_few_powers_of_ten(figures, exponent):
    frame = ratio_frame({"new": {"t": [10.0**-exponent, 0.5, 1.0, 2.0, 10.0**exponent]}})
    pt.evaluation.plot_ratio_boxplots(frame, "base", "unused.png")
    ticks = labelled_ticks(figures[-1].axes[0])
    assert 3 <= len(ticks) <= 9, ticks
    for loc, text in ticks:  # powers of ten, each label reading its tick's value
        assert np.log10(loc) == pytest.approx(round(np.log10(loc)))
        assert float(text.replace("\N{MINUS SIGN}", "-")) == pytest.approx(loc, rel=1e-6)
    assert any(loc == pytest.approx(1.0) for loc, _ in ticks)


def test_method_panels_share_one_y_axis(figures):
    frame = ratio_frame({"a": {"t": [0.9, 1.1, 1.0]}, "b": {"t": [3.0, 5.0, 4.0]}})
    pt.evaluation.plot_ratio_boxplots(frame, "base", "unused.png")
    a, b = figures[0].axes[:2]
    assert a.get_ylim() == b.get_ylim()
    assert a.get_ylim()[0] < 0.9 and a.get_ylim()[1] > 5.0


@pytest.mark.filterwarnings("ignore:n <= 5")
def test_synthetic_task_labels_carry_their_parameter(figures, tmp_path, monkeypatch):
    """A hetero comparison's boxes are labelled with each task's noise sd, a phase one's with
    its phase (read off the stored configuration)."""
    frame = ratio_frame({"new": {"task0": [1.0, 2.0], "task2": [0.5, 1.5]}})
    notes = task_notes("hetero", 3)
    pt.evaluation.plot_ratio_boxplots(frame, "base", "unused.png", task_notes=notes)
    labels = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert labels == ["task0\n(sd 0.1)", "task2\n(sd 0.4)"]

    from polytask.experiments import _comparison_report

    given = []
    monkeypatch.setattr(
        _comparison_report,
        "plot_ratio_boxplots",
        lambda *args, **kwargs: given.append(kwargs) or tmp_path / "ratios.png",
    )
    experiment = pt.experiments.SyntheticExperiment("phase", n=200, n_tasks=2, max_epochs=1)
    store = tmp_path / "s.sqlite"
    pt.experiments.replicate(experiment, 1, store=store, quiet=True)
    for name in ("ratios.png", "unsaved.png"):  # the figures the report embeds
        (tmp_path / name).write_bytes(b"")
    pt.experiments.write_comparison_report(store, tmp_path / "out", n_resamples=99)
    assert given[0]["task_notes"] == {"task0": "phase 0π", "task1": "phase 0.5π"}


@pytest.mark.parametrize(("n", "points"), [(8, True), (20, True), (21, False), (60, False)])
def test_few_replications_are_drawn_as_points_and_never_twice(figures, n, points):
    rng = np.random.default_rng(1)
    values = {t: [*rng.lognormal(0, 0.1, n - 1), 50.0] for t in ("t", "u")}  # + outlier
    pt.evaluation.plot_ratio_boxplots(ratio_frame({"new": values}), "base", "unused.png")
    deltas = ratio_frame({"new": {"x": values["t"]}}).rename(columns={"ratio": "delta_m"})
    pt.evaluation.plot_delta_m(deltas, "base", "unused.png")
    ratio_ax, delta_ax = figures[0].axes[0], figures[1].axes[0]
    if points:
        assert scatter_points(ratio_ax) == 2 * n and markers_drawn(ratio_ax) == 0
        assert scatter_points(delta_ax) == n and markers_drawn(delta_ax) == 0
    else:  # many replications: the boxes alone, with their fliers (the outlier among them)
        assert scatter_points(ratio_ax) == 0 and markers_drawn(ratio_ax) >= 2
        assert scatter_points(delta_ax) == 0 and markers_drawn(delta_ax) >= 1


@pytest.mark.parametrize(
    ("low", "high", "printed"),
    [
        (0.999985, 1.000002, "[0.99999, 1]"),  # at 3 or 4 digits both print as 1
        (0.99991, 0.99994, "[0.99991, 0.99994]"),  # both as 0.9999
        (0.81234, 1.21987, "[0.8123, 1.22]"),  # the tables' 4 significant digits
        (1.0, 1.0, "[1, 1]"),  # equal bounds stay equal
        (-0.0012345, 0.25, "[-0.001234, 0.25]"),
    ],
)
def test_report_intervals_print_distinct_bounds(low, high, printed):
    from polytask.experiments._report import interval_text

    assert interval_text(low, high) == printed
