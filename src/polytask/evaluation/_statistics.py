"""Statistics of replicated comparisons: per-task ratios, bootstrap intervals, paired tests.

Conventions (stated again in every report):

- **Improvement ratio** of a method against the baseline on one task and replication:
  ``baseline / method`` for a lower-is-better metric (MSE), ``method / baseline`` for a
  higher-is-better one (accuracy). Above 1 the method beat the baseline, whatever the metric.
- **Delta_m%** (Maninis et al. 2019; Navon et al. 2022): the mean over tasks of the relative
  change against the baseline, ``100 / T * sum_t s_t (M_m,t - M_b,t) / M_b,t`` with ``s_t = +1``
  for lower-is-better metrics and ``-1`` for higher-is-better ones. **Lower is better**;
  negative means the method improved on the baseline on average. It is asymmetric (a ratio of
  0.5 counts +100%, a ratio of 2 counts -50%), so the summary gives the **geometric-mean
  ratio** beside it: ``exp`` of the mean over replications and tasks of the log improvement
  ratio, symmetric on a log scale (above 1 the method beat the baseline).

Rules the functions enforce rather than paper over:

- Every metric carries its direction (``polytask.evaluation.METRICS``); an unknown metric is
  refused, never taken as lower-is-better.
- Duplicate rows of one (replication, task, method) are refused, never averaged.
- Each method is paired with the baseline alone: a value missing for one method (an undefined
  AUC) drops that (replication, task) for that method only; the number dropped is reported.
- Delta_m% is never averaged over fewer tasks: a replication that lacks a task for a method is
  left out of that method's Delta_m% (counted in ``n_incomplete`` and warned about), or refused
  with ``incomplete="raise"``.
- The paired test runs on the quantity the effect is reported in: log ratios for a ratio-scale
  metric (MSE, MAE), raw differences otherwise; the ``test`` column says which. The test drops
  zero differences before ranking (scipy's ``zero_method="wilcox"``; ``test`` says so where a
  pair has one), so with at most five non-zero differences a two-sided Wilcoxon test cannot
  reach p < 0.05: a warning is emitted and the ``note`` column says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from ._metrics import metric_info

RATIO_CONVENTION = (
    "ratio = baseline/method for lower-is-better metrics (method/baseline otherwise): "
    "above 1 the method beat the baseline"
)
DELTA_CONVENTION = (
    "Delta_m% = mean over tasks of the signed relative change against the baseline; "
    "lower is better, negative = better than the baseline; the geometric-mean ratio beside it "
    "is symmetric on a log scale (above 1: better than the baseline)"
)
# a two-sided exact Wilcoxon signed-rank test of n non-zero differences cannot go below
# 2 / 2**n: 0.0625 at n = 5, 0.03125 at n = 6 (zero differences are dropped: ZERO_METHOD)
MIN_TESTABLE_N = 6
ZERO_METHOD = "wilcox"
FEW_REPLICATIONS_NOTE = (
    "n <= 5: a two-sided Wilcoxon test cannot reach p < 0.05 (n counts the non-zero "
    "differences: the test drops zero ones); intervals and p are descriptive"
)
KEYS = ["replication", "task", "method"]


class FewReplicationsWarning(UserWarning):
    """Too few replications for the paired test to reach p < 0.05."""


class IncompleteReplicationsWarning(UserWarning):
    """Replications left out of Delta_m% because they lack a task for a method."""


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of p-values (family-wise error control).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.maximum.accumulate(adjusted)
    out = np.empty(m)
    out[order] = adjusted
    return out


def refuse_duplicate_rows(frame: pd.DataFrame) -> None:
    """Refuse a (replication, task, method) key with several result rows: a pivot would
    average them silently."""
    duplicated = frame[frame.duplicated(KEYS, keep=False)]
    if not duplicated.empty:
        keys = sorted(set(duplicated[KEYS].itertuples(index=False, name=None)), key=str)
        shown = ", ".join(map(str, keys[:5])) + (" ..." if len(keys) > 5 else "")
        raise ValueError(
            f"{len(keys)} (replication, task, method) keys have several result rows (they would "
            f"be averaged silently): {shown}"
        )


def _wide(frame: pd.DataFrame, baseline: str, metric: str) -> pd.DataFrame:
    """Rows (replication, task) x columns method of ``metric``; NaN where a value is missing.

    Refuses an unknown metric, a missing column or baseline, and duplicate result rows.
    """
    metric_info(metric)  # an unknown metric has no known direction: refused
    missing = [c for c in (*KEYS, metric) if c not in frame.columns]
    if missing:
        what = f"metric {metric!r}" if missing == [metric] else f"columns {missing}"
        raise ValueError(f"{what} not in the results; columns: {list(frame.columns)}")
    refuse_duplicate_rows(frame)
    wide = frame.pivot(index=["replication", "task"], columns="method", values=metric)
    if baseline not in wide.columns:
        raise ValueError(f"baseline {baseline!r} not among the methods {list(wide.columns)}")
    return wide.astype(float)


def _paired(wide: pd.DataFrame, method: str, baseline: str) -> tuple[pd.DataFrame, int]:
    """The (replication, task) rows where both ``method`` and ``baseline`` have a value, and
    how many rows were dropped because one of them lacks it."""
    pairs = wide[[method, baseline]]
    complete = pairs.notna().all(axis=1)
    return pairs[complete], int((~complete).sum())


def _improvement(method: pd.Series, base: pd.Series, greater: bool) -> pd.Series:
    return method / base if greater else base / method


def improvement_ratios(frame: pd.DataFrame, baseline: str, metric: str = "mse") -> pd.DataFrame:
    """Tidy ``replication, task, method, ratio`` for every method but the baseline.

    Each method is paired with the baseline alone: a missing value drops that (replication,
    task) for that method only.
    """
    wide = _wide(frame, baseline, metric)
    greater = metric_info(metric).greater_is_better
    rows = []
    for method in wide.columns:
        if method == baseline:
            continue
        pairs, _ = _paired(wide, method, baseline)
        ratio = _improvement(pairs[method], pairs[baseline], greater)
        part = ratio.rename("ratio").reset_index()
        part["method"] = method
        rows.append(part)
    columns = ["replication", "task", "method", "ratio"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def _log(values: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(values)


def _delta_parts(
    frame: pd.DataFrame, baseline: str, metrics: Mapping[str, str] | str
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Per (replication, task) x method: the signed relative change and the log improvement
    ratio, NaN where a pair is missing; every (replication, task) of the frame is a row."""
    tasks = list(dict.fromkeys(frame["task"]))
    per_task = {t: metrics for t in tasks} if isinstance(metrics, str) else dict(metrics)
    unknown = [t for t in per_task if t not in tasks]
    if unknown:
        raise ValueError(f"metrics given for tasks {unknown} without results; tasks: {tasks}")
    relative, logs = [], []
    for task, metric in per_task.items():
        wide = _wide(frame[frame["task"] == task], baseline, metric)
        greater = metric_info(metric).greater_is_better
        others = wide.drop(columns=baseline)
        base = wide[baseline]
        sign = -1.0 if greater else 1.0
        relative.append(sign * others.sub(base, axis=0).div(base, axis=0))
        log_ratio = _log(others).sub(_log(base), axis=0)
        logs.append(log_ratio if greater else -log_ratio)
    replications = list(dict.fromkeys(frame["replication"]))
    index = pd.MultiIndex.from_product(
        [replications, list(per_task)], names=["replication", "task"]
    )
    methods = [m for m in dict.fromkeys(frame["method"]) if m != baseline]
    relative_table = pd.concat(relative).reindex(index=index, columns=methods)
    log_table = pd.concat(logs).reindex(index=index, columns=methods)
    return relative_table, log_table, list(per_task)


def _complete(
    relative: pd.DataFrame, tasks: list[str], incomplete: Literal["drop", "raise"]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per replication x method: whether every task has a pair; refuses or counts the others."""
    if incomplete not in ("drop", "raise"):
        raise ValueError(f"incomplete must be 'drop' or 'raise', got {incomplete!r}")
    present = relative.notna().groupby(level="replication", sort=False).sum()
    complete = present == len(tasks)
    # a method with no pair at all in a replication has no Delta_m% there: not "incomplete"
    partial = ~complete & (present > 0)
    counts = {m: int(partial[m].sum()) for m in relative.columns}
    if partial.to_numpy().any():
        cases = []
        for method in relative.columns:
            for replication in partial.index[partial[method]]:
                have = relative.xs(replication, level="replication")[method].notna()
                cases.append(
                    f"{method} in replication {replication} lacks {list(have.index[~have])}"
                )
        detail = "; ".join(cases[:5]) + (" ..." if len(cases) > 5 else "")
        if incomplete == "raise":
            raise ValueError(
                f"Delta_m% would be averaged over fewer tasks for {len(cases)} (method, "
                f"replication) pairs: {detail}"
            )
        warnings.warn(
            f"{len(cases)} (method, replication) pairs lack a task and are left out of Delta_m% "
            f"(never averaged over fewer tasks): {detail}",
            IncompleteReplicationsWarning,
            stacklevel=3,
        )
    return complete, counts


def delta_m(
    frame: pd.DataFrame,
    baseline: str,
    metrics: Mapping[str, str] | str,
    *,
    incomplete: Literal["drop", "raise"] = "drop",
) -> pd.DataFrame:
    """Delta_m% per replication and method (lower is better; see the module's conventions).

    ``metrics`` names the metric used for each task (one name for all tasks, or task -> name).
    Every Delta_m% averages over all tasks: a replication that lacks a task for a method is left
    out of that method's rows with an :class:`IncompleteReplicationsWarning`
    (``incomplete="drop"``), or refused (``incomplete="raise"``).

    Returns
    -------
    pandas.DataFrame
        ``replication, method, delta_m, log_ratio``: ``log_ratio`` is the mean over tasks of
        the log improvement ratio (``exp`` of it is the replication's geometric-mean ratio).
    """
    relative, logs, tasks = _delta_parts(frame, baseline, metrics)
    complete, _ = _complete(relative, tasks, incomplete)
    return _delta_long(relative, logs, complete)


def _delta_long(relative: pd.DataFrame, logs: pd.DataFrame, complete: pd.DataFrame) -> pd.DataFrame:
    by_replication = relative.groupby(level="replication", sort=False)
    table = (100 * by_replication.mean()).where(complete)
    log_table = logs.groupby(level="replication", sort=False).mean().where(complete)
    long = table.reset_index().melt(id_vars="replication", var_name="method", value_name="delta_m")
    long["log_ratio"] = log_table.reset_index().melt(id_vars="replication")["value"].to_numpy()
    long = long[long["delta_m"].notna()]
    return long.reset_index(drop=True)


def _bootstrap_ci(
    values: np.ndarray, statistic, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    if not np.isfinite(values).all():  # e.g. the log ratio of a zero F1: no interval
        return float("nan"), float("nan")
    if len(values) < 2 or np.ptp(values) == 0:
        point = float(statistic(values)) if len(values) else float("nan")
        return (point, point) if len(values) else (float("nan"), float("nan"))
    result = stats.bootstrap(
        (values,),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _wilcoxon(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences, zero differences dropped
    (:data:`ZERO_METHOD`; 1.0 when all are zero)."""
    if len(differences) == 0 or np.all(differences == 0):
        return 1.0
    return float(
        stats.wilcoxon(differences, zero_method=ZERO_METHOD, alternative="two-sided").pvalue
    )


def _signed_rank_sums(differences: np.ndarray) -> tuple[int, float, float]:
    """What the Wilcoxon test ranks: the number of non-zero differences (the test's effective
    n) and the sums of the ranks of ``|d|`` of the positive and of the negative ones. The larger
    sum is the direction the test's evidence points to (the mean may point the other way).

    Examples
    --------
    >>> _signed_rank_sums(np.array([-1.0, -2.0, 0.0, 0.5]))
    (3, 1.0, 5.0)
    """
    nonzero = differences[differences != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    return len(nonzero), float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())


def _test_name(on: str, differences: np.ndarray) -> str:
    """``test`` of a row: the Wilcoxon test, what it ran on, and the zero differences it
    dropped when there were any."""
    zeros = int(np.sum(differences == 0))
    dropped = f" ({zeros} zero differences dropped: zero_method={ZERO_METHOD!r})" if zeros else ""
    return f"Wilcoxon signed-rank on {on}{dropped}"


def _warn_few(cases: list[str]) -> None:
    if cases:
        shown = ", ".join(cases[:6]) + (" ..." if len(cases) > 6 else "")
        warnings.warn(
            f"{FEW_REPLICATIONS_NOTE} ({shown}); p < 0.05 needs at least {MIN_TESTABLE_N} "
            "replications with a non-zero difference",
            FewReplicationsWarning,
            stacklevel=3,
        )


def summarize(
    frame: pd.DataFrame,
    baseline: str,
    metric: str = "mse",
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    incomplete: Literal["drop", "raise"] = "drop",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-task and overall statistics of every method against ``baseline``.

    Parameters
    ----------
    frame
        One row per (replication, task, method) with a column ``metric``; duplicates are
        refused.
    baseline
        The method every other one is paired with.
    metric
        A metric of the registry (``polytask.evaluation.METRICS``), which gives its direction;
        an unknown name is refused.
    confidence, n_resamples, seed
        The percentile bootstrap of the intervals.
    incomplete
        What to do with a replication that lacks a task for a method in Delta_m%: leave it out
        with a warning (``"drop"``, counted in ``n_incomplete``) or refuse (``"raise"``).

    Returns
    -------
    per_task
        One row per (method, task): replications ``n`` paired with the baseline,
        ``n_dropped`` (replications where the method or the baseline lacks a value) and
        ``n_test`` (the pairs with a non-zero difference, the ones the Wilcoxon test ranks), the
        median improvement ratio with its IQR and bootstrap CI, the geometric-mean ratio with
        its bootstrap CI, the win rate (share of replications where the method beat the
        baseline), the paired two-sided Wilcoxon signed-rank p-value, ``test`` (on log ratios
        for a ratio-scale metric, on differences otherwise, and how many zero differences it
        dropped when any), its Holm adjustment across the tasks of that method, and ``note``
        (non-empty when ``n_test <= 5``: p < 0.05 is out of reach).
    overall
        One row per method: ``n`` complete replications, ``n_incomplete`` left out, mean and
        median Delta_m% with a bootstrap CI of the mean, and the geometric-mean ratio over
        replications and tasks with its bootstrap CI, and ``note``.

    Warns
    -----
    FewReplicationsWarning
        When a comparison rests on at most five replications, or its test on at most five
        non-zero differences.
    IncompleteReplicationsWarning
        When replications are left out of Delta_m%.

    Examples
    --------
    >>> frame = pd.DataFrame({"replication": [0, 0, 1, 1], "task": ["a"] * 4,
    ...                       "method": ["base", "new"] * 2, "mse": [2.0, 1.0, 4.0, 1.0]})
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     per_task, overall = summarize(frame, "base", n_resamples=99)
    >>> per_task["median_ratio"].tolist(), overall["delta_m_mean"].tolist()
    ([3.0], [-62.5])
    >>> per_task["test"].tolist(), overall["gmean_ratio"].round(4).tolist()
    (['Wilcoxon signed-rank on log ratios'], [2.8284])
    """
    info = metric_info(metric)
    greater = info.greater_is_better
    wide = _wide(frame, baseline, metric)
    on = "log ratios" if info.ratio_scale else "differences"
    rows, few, empty = [], [], []
    tasks = list(dict.fromkeys(frame["task"]))
    for method in (m for m in dict.fromkeys(frame["method"]) if m != baseline):
        for task in tasks:
            part = wide.xs(task, level="task", drop_level=False)
            pairs, dropped = _paired(part, method, baseline)
            if pairs.empty:
                empty.append(f"{method}/{task}")
                continue
            m, b = pairs[method].to_numpy(), pairs[baseline].to_numpy()
            r = (m / b) if greater else (b / m)
            logs = _log(r)
            with np.errstate(invalid="ignore"):
                gmean = float(np.exp(logs.mean()))
            if info.ratio_scale:
                if not ((m > 0).all() and (b > 0).all()):
                    raise ValueError(
                        f"{metric} of {method} or {baseline} on task {task!r} is not positive; "
                        "its log ratios are undefined"
                    )
                differences = np.log(m) - np.log(b)
            else:
                differences = m - b
            p = _wilcoxon(differences)
            # the test ranks the non-zero differences only: they decide what p can reach
            n_test = int(np.count_nonzero(differences))
            note = FEW_REPLICATIONS_NOTE if n_test < MIN_TESTABLE_N else ""
            if note:
                zeros = f", {len(r) - n_test} zero differences dropped" if n_test < len(r) else ""
                few.append(f"{method}/{task}: n={n_test}{zeros}")
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "n": len(r),
                    "n_dropped": dropped,
                    "n_test": n_test,
                    "median_ratio": float(np.median(r)),
                    "q25": float(np.quantile(r, 0.25)),
                    "q75": float(np.quantile(r, 0.75)),
                    **dict(
                        zip(
                            ("median_ci_low", "median_ci_high"),
                            _bootstrap_ci(r, np.median, confidence, n_resamples, seed),
                            strict=True,
                        )
                    ),
                    "gmean_ratio": gmean,
                    **dict(
                        zip(
                            ("gmean_ci_low", "gmean_ci_high"),
                            np.exp(_bootstrap_ci(logs, np.mean, confidence, n_resamples, seed)),
                            strict=True,
                        )
                    ),
                    "win_rate": float(np.mean(r > 1)),
                    "wilcoxon_p": p,
                    "test": _test_name(on, differences),
                    "better_is": "higher" if greater else "lower",
                    "note": note,
                }
            )
    if empty:
        warnings.warn(
            f"no replication pairs these methods with {baseline!r}, left out: {empty}",
            UserWarning,
            stacklevel=2,
        )
    per_task = pd.DataFrame(rows)
    if not per_task.empty:
        per_task.insert(
            per_task.columns.get_loc("test") + 1,
            "holm_p",
            per_task.groupby("method")["wilcoxon_p"].transform(lambda p: holm(p.to_numpy())),
        )
    relative, logs_table, delta_tasks = _delta_parts(frame, baseline, metric)
    complete, n_incomplete = _complete(relative, delta_tasks, incomplete)
    deltas = _delta_long(relative, logs_table, complete)
    overall = []
    for method, group in deltas.groupby("method", sort=False):
        d = group["delta_m"].to_numpy()
        lr = group["log_ratio"].to_numpy()
        with np.errstate(invalid="ignore"):  # +inf and -inf log ratios: no geometric mean
            gmean = float(np.exp(lr.mean()))
        low, high = _bootstrap_ci(d, np.mean, confidence, n_resamples, seed)
        note = FEW_REPLICATIONS_NOTE if len(d) < MIN_TESTABLE_N else ""
        if note:
            few.append(f"{method}/Delta_m%: n={len(d)}")
        overall.append(
            {
                "method": method,
                "n": len(d),
                "n_incomplete": n_incomplete[method],
                "delta_m_mean": float(d.mean()),
                "delta_m_ci_low": low,
                "delta_m_ci_high": high,
                "delta_m_median": float(np.median(d)),
                "gmean_ratio": gmean,
                **dict(
                    zip(
                        ("gmean_ci_low", "gmean_ci_high"),
                        np.exp(_bootstrap_ci(lr, np.mean, confidence, n_resamples, seed)),
                        strict=True,
                    )
                ),
                "convention": "Delta_m%: lower is better; geometric-mean ratio: above 1 better",
                "note": note,
            }
        )
    _warn_few(few)
    return per_task, pd.DataFrame(overall)
