"""Statistics of replicated comparisons, checked against hand-computed values."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from polytask.evaluation import delta_m, holm, improvement_ratios, summarize

try:  # new in issue #12; imported lazily by the tests that need them
    from polytask.evaluation import FewReplicationsWarning, IncompleteReplicationsWarning
except ImportError:  # pragma: no cover - the code before issue #12
    FewReplicationsWarning = IncompleteReplicationsWarning = UserWarning


def frame_from(table):
    """table: {(replication, method, task): {metric: value}}"""
    return pd.DataFrame(
        [{"replication": r, "method": m, "task": t, **v} for (r, m, t), v in table.items()]
    )


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.03, 0.2 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (monotone), 0.2
    np.testing.assert_allclose(holm([0.03, 0.2, 0.01, 0.02]), [0.06, 0.2, 0.04, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_properties(p):
    adjusted = holm(p)
    assert np.all(adjusted >= np.asarray(p) - 1e-15) and np.all(adjusted <= 1)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-15)  # keeps the order of the raw p-values


def test_ratios_and_delta_m_by_hand():
    frame = frame_from(
        {
            (0, "base", "a"): {"mse": 2.0, "accuracy": 0.5},
            (0, "new", "a"): {"mse": 1.0, "accuracy": 0.6},
            (0, "base", "b"): {"mse": 4.0, "accuracy": 0.8},
            (0, "new", "b"): {"mse": 5.0, "accuracy": 0.4},
        }
    )
    ratios = improvement_ratios(frame, "base", "mse").set_index("task")["ratio"]
    assert ratios.to_dict() == {"a": 2.0, "b": 0.8}  # baseline / method for MSE
    acc = improvement_ratios(frame, "base", "accuracy").set_index("task")["ratio"]
    assert acc.to_dict() == pytest.approx({"a": 1.2, "b": 0.5})  # method / baseline
    # MSE: (1-2)/2 = -50%, (5-4)/4 = +25% -> mean -12.5
    assert delta_m(frame, "base", "mse")["delta_m"].tolist() == [pytest.approx(-12.5)]
    # accuracy counts with the opposite sign: -(0.6-0.5)/0.5 = -20%, -(0.4-0.8)/0.8 = +50%
    assert delta_m(frame, "base", "accuracy")["delta_m"].tolist() == [pytest.approx(15.0)]
    # mixed: task a on MSE (-50), task b on accuracy (+50) -> 0
    mixed = delta_m(frame, "base", {"a": "mse", "b": "accuracy"})
    assert mixed["delta_m"].tolist() == [pytest.approx(0.0)]


def test_summarize_by_hand():
    base = [1.0, 2.0, 4.0, 8.0, 1.0, 3.0]
    new = [0.5, 2.5, 1.0, 2.0, 0.5, 1.0]
    table = {}
    for r, (b, n) in enumerate(zip(base, new, strict=True)):
        table[(r, "base", "t")] = {"mse": b}
        table[(r, "new", "t")] = {"mse": n}
        table[(r, "base", "u")] = {"mse": 1.0 + r}
        table[(r, "new", "u")] = {"mse": 1.0 + r}  # a tie on every replication
    per_task, overall = summarize(frame_from(table), "base", n_resamples=999)
    row = per_task.set_index("task").loc["t"]
    ratios = np.array(base) / np.array(new)  # 2, 0.8, 4, 4, 2, 3
    assert row["n"] == 6
    assert row["median_ratio"] == pytest.approx(np.median(ratios)) == pytest.approx(2.5)
    assert row["q25"] == pytest.approx(2.0) and row["q75"] == pytest.approx(3.75)
    assert row["gmean_ratio"] == pytest.approx(np.exp(np.mean(np.log(ratios))))
    assert row["win_rate"] == pytest.approx(5 / 6)
    # MSE is a ratio-scale metric: the test runs on the log ratios the effect is reported in
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(np.log(new), np.log(base)).pvalue)
    assert row["test"] == "Wilcoxon signed-rank on log ratios" and row["n_dropped"] == 0
    assert row["median_ci_low"] <= row["median_ratio"] <= row["median_ci_high"]
    assert row["gmean_ci_low"] <= row["gmean_ratio"] <= row["gmean_ci_high"]
    tie = per_task.set_index("task").loc["u"]
    assert tie["wilcoxon_p"] == 1.0 and tie["median_ratio"] == 1.0 and tie["win_rate"] == 0.0
    assert per_task.set_index("task")["holm_p"].to_dict() == pytest.approx(
        dict(zip(["t", "u"], holm([row["wilcoxon_p"], 1.0]), strict=True))
    )
    # Delta_m per replication: mean over t (relative change) and u (0)
    expected = 100 * np.mean([(np.array(new) - base) / base, np.zeros(6)], axis=0)
    assert overall.loc[0, "delta_m_mean"] == pytest.approx(expected.mean())
    assert overall.loc[0, "delta_m_median"] == pytest.approx(np.median(expected))
    assert overall.loc[0, "delta_m_ci_low"] <= expected.mean() <= overall.loc[0, "delta_m_ci_high"]
    again, _ = summarize(frame_from(table), "base", n_resamples=999)
    pd.testing.assert_frame_equal(per_task, again)  # the bootstrap is seeded


def test_summarize_rejects_unknown_baseline_and_metric():
    frame = frame_from({(0, "a", "t"): {"mse": 1.0}, (0, "b", "t"): {"mse": 2.0}})
    with pytest.raises(ValueError, match=r"baseline 'zzz' not among the methods \['a', 'b'\]"):
        summarize(frame, "zzz")
    with pytest.raises(ValueError, match="metric 'f1' not in the results"):
        summarize(frame, "a", "f1")


# -- issue #12: statistics that say exactly what they measure -----------------------------------


def replicated(base, others, task="t", metric="mse"):
    """A frame of ``len(base)`` replications of one task: baseline values and other methods."""
    rows = []
    for r, b in enumerate(base):
        rows.append({"replication": r, "method": "base", "task": task, metric: b})
        for name, values in others.items():
            rows.append({"replication": r, "method": name, "task": task, metric: values[r]})
    return pd.DataFrame(rows)


def test_each_method_is_paired_with_the_baseline_alone():
    base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    good = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    holey = [np.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # e.g. an undefined metric in replication 0
    frame = replicated(base, {"good": good, "holey": holey})
    ratios = improvement_ratios(frame, "base")
    assert sorted(ratios.loc[ratios["method"] == "good", "replication"]) == list(range(7))
    assert sorted(ratios.loc[ratios["method"] == "holey", "replication"]) == list(range(1, 7))
    per_task, overall = summarize(frame, "base", n_resamples=99)
    per_task = per_task.set_index("method")
    assert per_task.loc["good", "n"] == 7 and per_task.loc["good", "n_dropped"] == 0
    assert per_task.loc["holey", "n"] == 6 and per_task.loc["holey", "n_dropped"] == 1
    expected = stats.wilcoxon(np.log(good), np.log(base)).pvalue
    assert per_task.loc["good", "wilcoxon_p"] == pytest.approx(expected)
    assert overall.set_index("method").loc["good", "n"] == 7


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.05, 20), st.floats(0.05, 20), st.floats(0.01, 100)),
        min_size=6,
        max_size=14,
    )
)
def test_ratio_scale_test_runs_on_log_ratios_and_ignores_scale(pairs):
    """Against scipy: the p of a ratio-scale metric is Wilcoxon's on log(method) - log(base),
    hence unchanged when a replication's two values are scaled together (a harder replication);
    a bounded metric (accuracy) is tested on raw differences."""
    base = np.array([b for b, _, _ in pairs])
    new = np.array([m for _, m, _ in pairs])
    scale = np.array([c for _, _, c in pairs])
    d = np.log(new) - np.log(base)
    assume(np.all(np.abs(d) > 1e-9) and np.min(np.diff(np.sort(np.abs(d)))) > 1e-6)  # no ties
    p = summarize(replicated(base, {"new": new}), "base", n_resamples=9)[0]["wilcoxon_p"][0]
    assert p == pytest.approx(stats.wilcoxon(np.log(new), np.log(base)).pvalue)
    scaled = replicated(base * scale, {"new": new * scale})
    assert summarize(scaled, "base", n_resamples=9)[0]["wilcoxon_p"][0] == pytest.approx(p)
    accuracy = replicated(base / 21, {"new": new / 21}, metric="accuracy")
    assume(np.all(np.abs(new - base) > 1e-9))
    per_task, _ = summarize(accuracy, "base", "accuracy", n_resamples=9)
    assert per_task["test"][0] == "Wilcoxon signed-rank on differences"
    assert per_task["wilcoxon_p"][0] == pytest.approx(stats.wilcoxon(new / 21, base / 21).pvalue)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_few_replications_warn_where_wilcoxon_cannot_reach_005(n):
    # scipy: n pairs all in one direction give the smallest two-sided p there is
    smallest = stats.wilcoxon(np.arange(1.0, n + 1)).pvalue
    assert (smallest < 0.05) == (n >= 6)
    frame = replicated(np.full(n, 2.0), {"new": np.linspace(0.5, 1.0, n)})
    if n <= 5:
        with pytest.warns(FewReplicationsWarning, match=r"n <= 5.*new/t: n=" + str(n)):
            per_task, overall = summarize(frame, "base", n_resamples=9)
        assert "cannot reach p < 0.05" in per_task["note"][0]
        assert "cannot reach p < 0.05" in overall["note"][0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            per_task, overall = summarize(frame, "base", n_resamples=9)
        assert per_task["note"][0] == "" and overall["note"][0] == ""


def test_unknown_metric_is_refused_not_taken_as_lower_is_better():
    frame = replicated([0.5] * 6, {"new": [0.7] * 6}, metric="r2")
    for call in (summarize, improvement_ratios):
        with pytest.raises(ValueError, match=r"unknown metric 'r2'.*known metrics: \['accuracy'"):
            call(frame, "base", "r2")
    with pytest.raises(ValueError, match="unknown metric 'r2'"):
        delta_m(frame, "base", "r2")


def test_duplicate_result_rows_are_refused_naming_their_keys():
    frame = replicated([1.0, 2.0], {"new": [1.0, 1.0]})
    frame = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)  # replication 1, new, again
    for call in (summarize, improvement_ratios, delta_m):
        with pytest.raises(ValueError, match=r"1 \(replication, task, method\).*\(1, 't', 'new'\)"):
            call(frame, "base", "mse")


def test_delta_m_never_averages_over_fewer_tasks():
    table = {}
    for r in range(3):
        for task, (b, m) in {"a": (2.0, 1.0), "b": (4.0, 5.0)}.items():
            table[(r, "base", task)] = {"mse": b}
            table[(r, "new", task)] = {"mse": m}
    table[(2, "new", "b")] = {"mse": np.nan}  # replication 2 lacks task b for "new"
    frame = frame_from(table)
    with pytest.warns(IncompleteReplicationsWarning, match=r"new in replication 2 lacks \['b'\]"):
        deltas = delta_m(frame, "base", "mse")
    assert deltas["replication"].tolist() == [0, 1]  # not replication 2 at -50% (task a only)
    assert deltas["delta_m"].tolist() == pytest.approx([-12.5, -12.5])
    with pytest.raises(ValueError, match=r"fewer tasks.*new in replication 2 lacks \['b'\]"):
        delta_m(frame, "base", "mse", incomplete="raise")
    with warnings.catch_warnings(), pytest.warns(IncompleteReplicationsWarning):
        warnings.simplefilter("ignore", FewReplicationsWarning)  # three replications
        _, overall = summarize(frame, "base", n_resamples=9)
    assert overall.loc[0, "n"] == 2 and overall.loc[0, "n_incomplete"] == 1
    assert overall.loc[0, "delta_m_mean"] == pytest.approx(-12.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 10), st.floats(0.1, 10)), min_size=2, max_size=8))
def test_geometric_mean_ratio_is_symmetric_where_delta_m_is_not(pairs):
    """Against scipy.stats.gmean: the overall geometric-mean ratio over replications and tasks;
    swapping the two methods inverts it, while Delta_m% changes by a different amount."""
    table = {}
    for r, (b, m) in enumerate(pairs):
        table[(r, "base", "a")] = {"mse": b}
        table[(r, "new", "a")] = {"mse": m}
        table[(r, "base", "b")] = {"mse": m}  # the mirror image on task b
        table[(r, "new", "b")] = {"mse": b}
    table[(0, "new", "a")] = {"mse": 0.5 * pairs[0][0]}  # one asymmetric cell
    frame = frame_from(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewReplicationsWarning)
        _, overall = summarize(frame, "base", n_resamples=9)
        _, swapped = summarize(
            frame.replace({"method": {"base": "new", "new": "base"}}), "base", n_resamples=9
        )
    wide = frame.pivot(index=["replication", "task"], columns="method", values="mse")
    ratios = (wide["base"] / wide["new"]).to_numpy()
    assert overall.loc[0, "gmean_ratio"] == pytest.approx(stats.gmean(ratios))
    assert overall.loc[0, "gmean_ratio"] * swapped.loc[0, "gmean_ratio"] == pytest.approx(1.0)
    assert overall.loc[0, "gmean_ci_low"] <= overall.loc[0, "gmean_ratio"] + 1e-12
    assert overall.loc[0, "gmean_ratio"] <= overall.loc[0, "gmean_ci_high"] + 1e-12


def test_delta_m_counts_a_halving_and_a_doubling_unequally_the_gmean_does_not():
    frame = frame_from(
        {
            (0, "base", "a"): {"mse": 1.0},
            (0, "new", "a"): {"mse": 0.5},  # ratio 2
            (0, "base", "b"): {"mse": 1.0},
            (0, "new", "b"): {"mse": 2.0},  # ratio 0.5
        }
    )
    with pytest.warns(FewReplicationsWarning):
        _, overall = summarize(frame, "base", n_resamples=9)
    assert overall.loc[0, "delta_m_mean"] == pytest.approx(25.0)  # (-50 + 100) / 2
    assert overall.loc[0, "gmean_ratio"] == pytest.approx(1.0)
