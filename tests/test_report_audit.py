"""Defects an independent audit of the statistics and reports found: log-axis tick labels that
named another value, a suite verdict whose direction came from the mean while its significance
came from a Wilcoxon test, a "p < 0.05 unreachable" note that counted the zero differences the
test drops, and smaller reporting slips. Numbers are checked against scipy and numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from polytask.evaluation import (
    FewReplicationsWarning,
    IncompleteReplicationsWarning,
    _plots,
    summarize,
)
from polytask.evaluation._leaderboard import dataset_board, delta_table, mean_ranks
from polytask.experiments._census import census_section, census_summary, delta_m_against
from polytask.experiments._suite import DatasetExperiment
from polytask.experiments._suite_report import Leaderboard, _coverage_note, write_leaderboard
from polytask.experiments._synthetic import RunResult
from polytask.training import History


def _frame(values: dict[str, dict[str, list[float]]], metric: str) -> pd.DataFrame:
    """values: task -> method -> one value per replication."""
    return pd.DataFrame(
        [
            {"replication": r, "task": t, "method": m, metric: v}
            for t, per_method in values.items()
            for m, column in per_method.items()
            for r, v in enumerate(column)
        ]
    )


# -- D1: every tick label reads back as its tick ------------------------------------------------


def _digits(text: str) -> int:
    """Significant digits of a %g label: its mantissa's, less leading and trailing zeros."""
    return len(text.split("e")[0].replace(".", "").replace("-", "").strip("0"))


def _drawn_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    plt = _plots._pyplot()
    fig, ax = plt.subplots()
    try:
        _plots._readable_log_axis([ax], np.array([lo, hi]))
        fig.canvas.draw()
        low, high = ax.get_ylim()
        return [
            (float(t.get_loc()), t.label1.get_text())
            for t in ax.yaxis.get_major_ticks()
            if low <= t.get_loc() <= high and t.label1.get_text()
        ]
    finally:
        plt.close(fig)


RANGES = [(lo, hi) for lo in np.linspace(0.8, 1.0, 9) for hi in np.linspace(1.0, 1.6, 13)] + [
    (0.875, 1.0),
    (0.9999, 1.0001),
    (0.99, 1.01),
    (1.2, 1.9),
    (0.3, 0.9),
    (2.0, 60.0),
    (0.5, 2.0),
    (1e-3, 50.0),
    (1.0, 1e6),
    (1e-7, 1e-2),
]


def test_every_log_axis_label_reads_back_as_its_tick():
    for lo, hi in RANGES:
        ticks = _drawn_ticks(float(lo), float(hi))
        assert len(ticks) >= 2, (lo, hi, ticks)
        texts = [text for _, text in ticks]
        assert len(set(texts)) == len(texts), (lo, hi, ticks)
        for loc, text in ticks:
            assert np.isclose(float(text), loc, rtol=1e-9, atol=0), (lo, hi, loc, text)
            # short: no more significant digits than the tick itself has (at 12 digits)
            assert _digits(text) <= max(2, _digits(f"{loc:.12g}")), (lo, hi, loc, text)


def test_ratio_boxplot_labels_the_tick_at_1_05_as_1_05(monkeypatch):
    kept = []
    monkeypatch.setattr(_plots, "_save", lambda fig, path: kept.append(fig) or path)
    rows = [
        {"method": "new", "task": t, "replication": r, "ratio": v}
        for r in range(6)
        for t, v in (("a", 1.054 + 0.001 * r), ("b", 1.029))
    ]
    rows += [
        {"method": "bad", "task": t, "replication": r, "ratio": v}
        for r in range(6)
        for t, v in (("a", 0.875), ("b", 0.9286))
    ]
    _plots.plot_ratio_boxplots(pd.DataFrame(rows), "base", "unused.png", "auc")
    ax = kept[0].axes[0]
    kept[0].canvas.draw()
    low, high = ax.get_ylim()
    shown = {
        round(t.get_loc(), 9): t.label1.get_text()
        for t in ax.yaxis.get_major_ticks()
        if low <= t.get_loc() <= high
    }
    _plots._pyplot().close(kept[0])
    assert shown[1.05] == "1.05" and shown[0.95] == "0.95" and shown[1.0] == "1"
    assert _plots._tick_labels(np.array([0.8750000000000001, 0.9, 10.0, 20.0])) == [
        "0.875",
        "0.9",
        "10",
        "20",
    ]


# -- D2: the verdict's direction is the test's ---------------------------------------------------


def _skewed(metric: str, base: float, usual: float, outlier: float) -> pd.DataFrame:
    """Twelve replications: the method scores ``usual`` in eleven, ``outlier`` in one."""
    new = [outlier] + [usual] * 11
    return _frame({"a": {"mean": [base] * 12, "uw": new}}, metric)


def _deltas(frame: pd.DataFrame, metric: str, greater: bool) -> np.ndarray:
    wide = frame.pivot(index="replication", columns="method", values=metric)
    sign = -1.0 if greater else 1.0
    return (100 * sign * (wide["uw"] - wide["mean"]) / wide["mean"]).to_numpy()


@pytest.mark.parametrize(
    ("metric", "greater", "usual", "outlier", "test_says", "mean_says"),
    [
        ("mse", False, 0.9, 3.0, "better", "worse"),  # 11 x 10% better, one 200% worse
        ("accuracy", True, 0.18, 0.8, "worse", "better"),  # 11 x 10% worse, one 300% better
    ],
)
def test_a_test_significant_against_the_mean_gives_no_verdict(
    metric, greater, usual, outlier, test_says, mean_says
):
    frame = _skewed(metric, 1.0 if metric == "mse" else 0.2, usual, outlier)
    d = _deltas(frame, metric, greater)
    # independently: the mean points one way, scipy's one-sided tests the other
    assert (d.mean() < 0) == (mean_says == "better")
    one_sided = {
        "better": stats.wilcoxon(d, alternative="less").pvalue,
        "worse": stats.wilcoxon(d, alternative="greater").pvalue,
    }
    assert one_sided[test_says] < 0.025 and one_sided[mean_says] > 0.5
    board = dataset_board(frame, "mean", metric, n_resamples=199)
    row = board.set_index("method").loc["uw"]
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert row["holm_p"] < 0.05
    assert row["verdict"] == ""  # the mean's sign was the verdict before: significant that way
    assert row["direction"] == test_says
    # the suite's consumers: no win or loss counted, no bold cell, a marked one and a footnote
    ranks = mean_ranks({"toy": delta_table(frame, "mean", metric)}, {"toy": board}, n_resamples=9)
    assert ranks.set_index("method").loc["uw", ["better", "worse"]].tolist() == [0, 0]
    cell = Leaderboard({"toy": board}, ranks, pd.DataFrame()).delta_cells()
    text = cell.set_index("method").loc["uw", "toy"]
    assert "**" not in text and text.endswith("†")


def test_a_test_and_mean_that_agree_keep_their_verdict():
    frame = _skewed("mse", 1.0, 0.9, 0.95)  # better in every replication
    d = _deltas(frame, "mse", greater=False)
    assert d.mean() < 0 and stats.wilcoxon(d, alternative="less").pvalue < 0.025
    row = dataset_board(frame, "mean", "mse", n_resamples=199).set_index("method").loc["uw"]
    assert row["verdict"] == row["direction"] == "better"


def test_the_written_leaderboard_says_why_a_significant_row_has_no_verdict(tmp_path):
    frame = _skewed("mse", 1.0, 0.9, 3.0)
    board = dataset_board(frame, "mean", "mse", n_resamples=199)
    ranks = mean_ranks({"energy": delta_table(frame, "mean", "mse")}, {"energy": board})
    experiment = DatasetExperiment("energy", methods=("mean", "uw"), references=())
    files = write_leaderboard(
        Leaderboard({"energy": board}, ranks, pd.DataFrame()), {"energy": experiment}, tmp_path
    )
    text = files["markdown"].read_text()
    assert "none † (test: better, mean: worse)" in text
    assert "†: the Wilcoxon test is significant (Holm p < 0.05) in the direction opposite" in text
    assert "**+7.50" not in text and "zero_method='wilcox'" in text


# -- D3: the note counts the non-zero differences the test ranks --------------------------------

BASE = [0.80, 0.82, 0.81, 0.79, 0.80, 0.83, 0.78, 0.81]


def _ties(zeros: int) -> pd.DataFrame:
    """Eight replications of an accuracy task; the method ties the baseline in ``zeros``."""
    new = [b + 0.05 + 0.001 * i for i, b in enumerate(BASE)]
    new[len(BASE) - zeros :] = BASE[len(BASE) - zeros :]
    return _frame({"a": {"mean": BASE, "uw": new}}, "accuracy")


def test_zero_differences_count_against_the_reachable_p():
    frame = _ties(3)
    wide = frame.pivot(index="replication", columns="method", values="accuracy")
    d = (wide["uw"] - wide["mean"]).to_numpy()
    assert np.count_nonzero(d) == 5
    # scipy drops the zeros: five same-signed differences give its smallest p, 2 / 2**5
    assert stats.wilcoxon(d).pvalue == pytest.approx(2 / 2**5) and 2 / 2**5 > 0.05
    with pytest.warns(FewReplicationsWarning, match=r"uw/a: n=5, 3 zero differences dropped"):
        per_task, _ = summarize(frame, "mean", "accuracy", n_resamples=99)
    row = per_task.iloc[0]
    assert row["n"] == 8 and row["n_test"] == 5
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert "cannot reach p < 0.05" in row["note"]
    assert "3 zero differences dropped: zero_method='wilcox'" in row["test"]
    board = dataset_board(frame, "mean", "accuracy", n_resamples=99)
    assert board["n"].tolist() == [8, 8] and int(board.loc[1, "n_test"]) == 5
    note = _coverage_note(board)
    assert "cannot reach p < 0.05" in note and "uw 5 of 8" in note


def test_six_non_zero_differences_of_eight_give_no_note():
    frame = _ties(2)
    wide = frame.pivot(index="replication", columns="method", values="accuracy")
    d = (wide["uw"] - wide["mean"]).to_numpy()
    assert np.count_nonzero(d) == 6 and stats.wilcoxon(d).pvalue < 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error", FewReplicationsWarning)
        per_task, _ = summarize(frame, "mean", "accuracy", n_resamples=99)
    assert per_task.loc[0, "note"] == "" and per_task.loc[0, "n_test"] == 6
    assert _coverage_note(dataset_board(frame, "mean", "accuracy", n_resamples=99)) == ""


def test_census_note_counts_the_non_zero_paired_differences(tmp_path):
    frame = _ties(3).replace({"mean": "shared-bottom/mean", "uw": "mmoe/mean"})
    frame = frame.rename(columns={"accuracy": "auc"})
    assert "cannot reach p < 0.05" in census_section(frame, tmp_path)
    _, paired = census_summary(frame)
    assert paired["n_test"].tolist() == [5]


# -- minor: a NaN metric is named; curves say what they plot; metric directions ----------------


def test_delta_table_names_the_task_whose_metric_is_nan():
    frame = _frame(
        {
            "a": {"base": [0.8] * 4, "new": [0.85, np.nan, 0.86, 0.84]},
            "b": {"base": [0.7] * 4, "new": [0.72] * 4},
        },
        "auc",
    )
    with pytest.warns(
        IncompleteReplicationsWarning, match=r"replication 1: \['new'\] \(NaN auc: new on \['a'\]\)"
    ):
        table = delta_table(frame, "base", "auc", where="toy")
    assert list(table.index) == [0, 2, 3]


def test_training_curves_label_the_stop_criterion(monkeypatch):
    kept = []
    monkeypatch.setattr(_plots, "_save", lambda fig, path: kept.append(fig) or path)
    history = History(
        ("a",),
        [{"epoch": e, "train_loss": 1.0 / e, "stop_loss": 1.2 / e} for e in (1, 2, 3)],
        best_epoch=3,
    )
    _plots.plot_training_curves({"uw": history}, "unused.png")
    ax = kept[0].axes[0]
    assert ax.get_title() == "uw: stop criterion per epoch"
    assert "mean task loss" in ax.get_ylabel() and "uw" not in ax.get_ylabel()
    assert [line.get_label() for line in ax.get_lines()[:2]] == ["train set", "stop set"]
    _plots._pyplot().close(kept[0])


class _Experiment:
    baseline = "base"


@pytest.mark.parametrize("metric", ["mse", "mae", "accuracy", "auc"])
def test_run_ratios_are_above_one_when_the_method_is_better(metric):
    greater = metric in ("accuracy", "auc")
    better, worse = (0.9, 0.6) if greater else (0.5, 2.0)
    metrics = {
        "base": {"a": {metric: 0.8}, "b": {metric: 0.8}},
        "new": {"a": {metric: better}, "b": {metric: worse}},
    }
    result = RunResult(_Experiment(), 0, None, None, metrics=metrics)  # type: ignore[arg-type]
    ratios = result.ratios(metric)["new"]
    expected = np.divide([better, worse], 0.8) if greater else np.divide(0.8, [better, worse])
    np.testing.assert_allclose([ratios["a"], ratios["b"]], expected)
    assert ratios["a"] > 1 > ratios["b"]
    with pytest.raises(ValueError, match="unknown metric 'r2'"):
        result.ratios("r2")


@pytest.mark.parametrize(("metric", "sign"), [("auc", -1.0), ("accuracy", -1.0), ("mse", 1.0)])
def test_census_delta_m_follows_the_metric_direction(metric, sign):
    base, new = np.array([0.8, 0.5]), np.array([0.88, 0.48])  # task a +10%, task b -4%
    metrics = {
        "st": {t: {metric: float(v)} for t, v in zip("ab", base, strict=True)},
        "mt": {t: {metric: float(v)} for t, v in zip("ab", new, strict=True)},
    }
    expected = 100 * np.mean(sign * (new - base) / base)
    got = delta_m_against(metrics, "st", metric)
    assert got["mt"] == pytest.approx(expected) and got["st"] == 0.0
    # higher values are better for AUC (Delta_m% -3: lower is better), worse for MSE (+3)
    assert got["mt"] == pytest.approx(-3.0 if sign < 0 else 3.0)


def test_the_run_tables_ratio_column_is_labelled_by_the_metrics_direction():
    """``results_table`` labels its ratio ``baseline/method`` for MSE and ``method/baseline``
    for a higher-is-better metric, the way ``RunResult.ratios`` computes it."""
    from polytask.experiments._report import results_table

    metrics = {
        "base": {"a": {"mse": 2.0, "accuracy": 0.5}},
        "new": {"a": {"mse": 1.0, "accuracy": 0.8}},
    }
    result = RunResult(_Experiment(), 0, None, None, metrics=metrics)  # type: ignore[arg-type]
    assert results_table(result, "mse")["ratio base/new"].tolist() == [2.0]
    assert results_table(result, "accuracy")["ratio new/base"].tolist() == [pytest.approx(1.6)]
