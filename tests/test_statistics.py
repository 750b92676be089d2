"""Statistics of replicated comparisons, checked against hand-computed values."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from polytask.evaluation import delta_m, holm, improvement_ratios, summarize


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
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(new, base).pvalue)
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
