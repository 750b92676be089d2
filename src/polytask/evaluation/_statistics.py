"""Statistics of replicated comparisons: per-task ratios, bootstrap intervals, paired tests.

Conventions (stated again in every report):

- **Improvement ratio** of a method against the baseline on one task and replication:
  ``baseline / method`` for a lower-is-better metric (MSE), ``method / baseline`` for a
  higher-is-better one (accuracy). Above 1 the method beat the baseline, whatever the metric.
- **Delta_m%** (Maninis et al. 2019; Navon et al. 2022): the mean over tasks of the relative
  change against the baseline, ``100 / T * sum_t s_t (M_m,t - M_b,t) / M_b,t`` with ``s_t = +1``
  for lower-is-better metrics and ``-1`` for higher-is-better ones. **Lower is better**;
  negative means the method improved on the baseline on average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ._metrics import GREATER_IS_BETTER

RATIO_CONVENTION = (
    "ratio = baseline/method for lower-is-better metrics (method/baseline otherwise): "
    "above 1 the method beat the baseline"
)
DELTA_CONVENTION = (
    "Delta_m% = mean over tasks of the signed relative change against the baseline; "
    "lower is better, negative = better than the baseline"
)


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


def _paired(frame: pd.DataFrame, baseline: str, metric: str) -> pd.DataFrame:
    """Rows (replication, task) x columns method of ``metric``; only complete replications."""
    if metric not in frame.columns:
        raise ValueError(f"metric {metric!r} not in the results; columns: {list(frame.columns)}")
    wide = frame.pivot_table(index=["replication", "task"], columns="method", values=metric)
    if baseline not in wide.columns:
        raise ValueError(f"baseline {baseline!r} not among the methods {list(wide.columns)}")
    return wide.dropna()


def improvement_ratios(frame: pd.DataFrame, baseline: str, metric: str = "mse") -> pd.DataFrame:
    """Tidy ``replication, task, method, ratio`` for every method but the baseline."""
    wide = _paired(frame, baseline, metric)
    greater = GREATER_IS_BETTER.get(metric, False)
    rows = []
    for method in wide.columns:
        if method == baseline:
            continue
        ratio = wide[method] / wide[baseline] if greater else wide[baseline] / wide[method]
        part = ratio.rename("ratio").reset_index()
        part["method"] = method
        rows.append(part)
    return pd.concat(rows, ignore_index=True)[["replication", "task", "method", "ratio"]]


def delta_m(frame: pd.DataFrame, baseline: str, metrics: dict[str, str] | str) -> pd.DataFrame:
    """Delta_m% per replication and method (lower is better; see the module's conventions).

    ``metrics`` names the metric used for each task (one name for all tasks, or task -> name).
    """
    tasks = frame["task"].unique()
    per_task = {t: metrics for t in tasks} if isinstance(metrics, str) else dict(metrics)
    parts = []
    for task, metric in per_task.items():
        wide = _paired(frame[frame["task"] == task], baseline, metric)
        sign = -1.0 if GREATER_IS_BETTER.get(metric, False) else 1.0
        rel = wide.drop(columns=baseline).sub(wide[baseline], axis=0).div(wide[baseline], axis=0)
        parts.append(sign * rel)
    relative = pd.concat(parts)
    table = 100 * relative.groupby(level="replication").mean()
    long = table.reset_index().melt(id_vars="replication", var_name="method", value_name="delta_m")
    return long.dropna()


def _bootstrap_ci(
    values: np.ndarray, statistic, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
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


def _wilcoxon(method: np.ndarray, base: np.ndarray) -> float:
    differences = method - base
    if len(differences) == 0 or np.all(differences == 0):
        return 1.0
    return float(stats.wilcoxon(method, base, alternative="two-sided").pvalue)


def summarize(
    frame: pd.DataFrame,
    baseline: str,
    metric: str = "mse",
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-task and overall statistics of every method against ``baseline``.

    Returns
    -------
    per_task
        One row per (method, task): replications ``n``, the median improvement ratio with its
        IQR and bootstrap CI, the geometric-mean ratio with its bootstrap CI, the win rate
        (share of replications where the method beat the baseline), the paired Wilcoxon
        signed-rank p-value and its Holm adjustment across the tasks of that method.
    overall
        One row per method: mean and median Delta_m% with a bootstrap CI of the mean.

    Examples
    --------
    >>> frame = pd.DataFrame({"replication": [0, 0, 1, 1], "task": ["a"] * 4,
    ...                       "method": ["base", "new"] * 2, "mse": [2.0, 1.0, 4.0, 1.0]})
    >>> per_task, overall = summarize(frame, "base", n_resamples=99)
    >>> per_task["median_ratio"].tolist(), overall["delta_m_mean"].tolist()
    [[3.0], [-62.5]]
    """
    ratios = improvement_ratios(frame, baseline, metric)
    wide = _paired(frame, baseline, metric)
    greater = GREATER_IS_BETTER.get(metric, False)
    rows = []
    for (method, task), group in ratios.groupby(["method", "task"], sort=False):
        r = group["ratio"].to_numpy()
        pairs = wide.xs(task, level="task")
        logs = np.log(r)
        rows.append(
            {
                "method": method,
                "task": task,
                "n": len(r),
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
                "gmean_ratio": float(np.exp(logs.mean())),
                **dict(
                    zip(
                        ("gmean_ci_low", "gmean_ci_high"),
                        np.exp(_bootstrap_ci(logs, np.mean, confidence, n_resamples, seed)),
                        strict=True,
                    )
                ),
                "win_rate": float(np.mean(r > 1)),
                "wilcoxon_p": _wilcoxon(pairs[method].to_numpy(), pairs[baseline].to_numpy()),
                "better_is": "higher" if greater else "lower",
            }
        )
    per_task = pd.DataFrame(rows)
    per_task["holm_p"] = per_task.groupby("method")["wilcoxon_p"].transform(
        lambda p: holm(p.to_numpy())
    )
    deltas = delta_m(frame, baseline, metric)
    overall = []
    for method, group in deltas.groupby("method", sort=False):
        d = group["delta_m"].to_numpy()
        low, high = _bootstrap_ci(d, np.mean, confidence, n_resamples, seed)
        overall.append(
            {
                "method": method,
                "n": len(d),
                "delta_m_mean": float(d.mean()),
                "delta_m_ci_low": low,
                "delta_m_ci_high": high,
                "delta_m_median": float(np.median(d)),
                "convention": "lower is better",
            }
        )
    return per_task, pd.DataFrame(overall)
