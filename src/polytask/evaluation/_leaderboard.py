"""Statistics of a benchmark suite: per data set, each method's Delta_m% against a baseline with
its bootstrap interval and Holm-adjusted paired test; across data sets, mean ranks with
bootstrap intervals and counts of significant wins and losses; relative RMSE per target."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ._statistics import (
    IncompleteReplicationsWarning,
    _bootstrap_ci,
    _signed_rank_sums,
    _wilcoxon,
    delta_m,
    holm,
)

ALPHA = 0.05


def delta_long(
    frame: pd.DataFrame, baseline: str, metric: str, exclude: Sequence[str] = ()
) -> pd.DataFrame:
    """:func:`delta_m` of every label but ``exclude`` (``replication, method, delta_m,
    log_ratio``); replications lacking a task for a label are left out of its rows."""
    kept = frame[~frame["method"].isin(exclude)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # incomplete replications are dropped, never averaged
        return delta_m(kept, baseline, metric)


def delta_table(
    frame: pd.DataFrame,
    baseline: str,
    metric: str,
    exclude: Sequence[str] = (),
    *,
    long: pd.DataFrame | None = None,
    where: str = "",
) -> pd.DataFrame:
    """Delta_m% (lower is better) per replication (rows) and label (columns) against
    ``baseline``, whose column is 0; only replications where every label has every task's
    metric (the others, the labels that lack a task there and the tasks whose metric is NaN
    are named in an :class:`IncompleteReplicationsWarning`, prefixed by ``where``: the data
    set).

    Examples
    --------
    >>> frame = pd.DataFrame({"replication": [0, 0, 1, 1], "task": ["a"] * 4,
    ...                       "method": ["base", "new"] * 2, "mse": [2.0, 1.0, 4.0, 2.0]})
    >>> delta_table(frame, "base", "mse").to_dict("list")
    {'base': [0.0, 0.0], 'new': [-50.0, -50.0]}
    """
    kept = frame[~frame["method"].isin(exclude)]
    if long is None:
        long = delta_long(frame, baseline, metric, exclude)
    wide = long.pivot(index="replication", columns="method", values="delta_m")
    labels = [m for m in dict.fromkeys(kept["method"]) if m != baseline]
    # every replication of the results, also one that lacks a task for every label
    wide = wide.reindex(index=sorted(set(kept["replication"])), columns=labels)
    wide.insert(0, baseline, 0.0)
    complete = wide.dropna()
    if len(complete) < len(wide):  # a rank needs every label: say what the ranks leave out
        tasks = list(dict.fromkeys(kept["task"]))
        lacking, undefined = {}, {}
        for r, part in kept.groupby("replication"):
            if r in complete.index:
                continue
            # a task's row may be there with a NaN metric (an undefined AUC): name that task
            for m in wide.columns:
                rows = part[part["method"] == m]
                present = set(rows["task"])
                nan = [t for t in tasks if t in set(rows.loc[rows[metric].isna(), "task"])]
                if present != set(tasks) or nan:
                    lacking.setdefault(r, []).append(m)
                if nan:
                    undefined.setdefault(r, []).append(f"{m} on {nan}")
        listed = "; ".join(
            f"replication {r}: {labels}"
            + (f" (NaN {metric}: {', '.join(undefined[r])})" if r in undefined else "")
            for r, labels in lacking.items()
        )
        warnings.warn(
            f"{where + ': ' if where else ''}{len(lacking)} of {len(wide)} replications lack a "
            f"task or its {metric} for some label and are left out of the Delta_m% table, for "
            f"every label ({listed})",
            IncompleteReplicationsWarning,
            stacklevel=2,
        )
    return complete


def dataset_board(
    frame: pd.DataFrame,
    baseline: str,
    metric: str,
    *,
    exclude: Sequence[str] = (),
    references: Sequence[str] = (),
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    long: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per label of one data set: Delta_m% against ``baseline`` (mean over
    replications, percentile-bootstrap interval), the geometric-mean ratio, the two-sided
    Wilcoxon signed-rank test of the per-replication Delta_m% against 0 (paired: each
    replication's Delta_m% is measured against the baseline on the same split), its Holm
    adjustment, ``n_test`` (the non-zero Delta_m%, the ones the test ranks: it drops zero
    differences, so with ``n_test <= 5`` it cannot reach p < 0.05), ``direction`` (where the
    test's evidence points: ``better`` when the negative Delta_m% carry the larger signed-rank
    sum, ``worse`` when the positive ones do) and ``verdict``: the direction when the
    Holm-adjusted p is below 0.05 and the mean Delta_m% has the same sign, else empty. A test
    significant against the mean's sign (a skewed distribution: one replication far worse,
    the others better) gives no verdict. Holm's family is the methods (every label but the
    ``references``); the references form a family of their own, so which references ran never
    changes a method's adjusted p.

    Examples
    --------
    >>> rows = [{"replication": r, "task": "a", "method": m, "mse": v}
    ...         for r in range(8) for m, v in (("base", 2.0 + r), ("new", 1.0 + r))]
    >>> board = dataset_board(pd.DataFrame(rows), "base", "mse", n_resamples=99)
    >>> board.loc[1, "method"], int(board.loc[1, "n"]), board.loc[1, "verdict"]
    ('new', 8, 'better')

    Eleven replications 10% better and one 200% worse: the test is significant for better,
    the mean says worse, so there is no verdict.

    >>> rows = [{"replication": r, "task": "a", "method": m, "mse": v}
    ...         for r in range(12) for m, v in (("base", 1.0), ("new", 0.9 if r else 3.0))]
    >>> row = dataset_board(pd.DataFrame(rows), "base", "mse", n_resamples=99).loc[1]
    >>> round(float(row["delta_m"]), 2), round(float(row["holm_p"]), 4)
    (7.5, 0.0332)
    >>> row["direction"], row["verdict"]
    ('better', '')
    """
    kept = frame[~frame["method"].isin(exclude)]
    if long is None:  # (a caller that also needs delta_table computes it once)
        long = delta_long(frame, baseline, metric, exclude)
    rows = [
        {
            "method": baseline,
            "n": int(kept.loc[kept["method"] == baseline, "replication"].nunique()),
            "delta_m": 0.0,
            "ci_low": 0.0,
            "ci_high": 0.0,
            "gmean_ratio": 1.0,
            "wilcoxon_p": np.nan,
            "n_test": pd.NA,
            "direction": "",
        }
    ]
    groups = dict(list(long.groupby("method", sort=False)))
    intervals = _intervals(
        {m: g["delta_m"].to_numpy() for m, g in groups.items()}, confidence, n_resamples, seed
    )
    for method, group in groups.items():
        d = group["delta_m"].to_numpy()
        low, high = intervals[method]
        with np.errstate(invalid="ignore"):
            gmean = float(np.exp(group["log_ratio"].mean()))
        # Delta_m% is lower-is-better: negative differences carrying the larger rank sum are
        # the test's evidence for "better", whatever the mean says
        n_test, positive, negative = _signed_rank_sums(d)
        direction = "better" if negative > positive else "worse" if positive > negative else ""
        rows.append(
            {
                "method": method,
                "n": len(d),
                "delta_m": float(d.mean()),
                "ci_low": low,
                "ci_high": high,
                "gmean_ratio": gmean,
                "wilcoxon_p": _wilcoxon(d),
                "n_test": n_test,
                "direction": direction,
            }
        )
    board = pd.DataFrame(rows)
    board["n_test"] = board["n_test"].astype("Int64")
    board["holm_p"] = np.nan
    is_reference = board["method"].isin(references)
    for family in (~is_reference, is_reference):
        tested = family & board["wilcoxon_p"].notna()
        if tested.any():
            board.loc[tested, "holm_p"] = holm(board.loc[tested, "wilcoxon_p"].to_numpy())
    mean_direction = np.where(
        board["delta_m"] < 0, "better", np.where(board["delta_m"] > 0, "worse", "")
    )
    # significance is the test's; a mean of the other sign would be reported as significant
    # for an effect the test did not find
    agrees = (board["holm_p"] < ALPHA) & (board["direction"] == mean_direction)
    board["verdict"] = np.where(agrees, board["direction"], "")
    return board


def mean_ranks(
    deltas: Mapping[str, pd.DataFrame],
    boards: Mapping[str, pd.DataFrame] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Each label's mean rank across data sets (1 = lowest mean Delta_m%, ties averaged), with
    a percentile-bootstrap interval that resamples each data set's replications, and with
    ``boards`` (:func:`dataset_board` per data set) the number of data sets on which the label
    is significantly better or worse than the baseline (its ``verdict``: none where the test
    and the mean Delta_m% point opposite ways).

    ``deltas`` maps a data set to its :func:`delta_table`; labels missing from a data set are
    ranked over the labels every data set has (the others are left out, with a warning).

    Examples
    --------
    >>> a = pd.DataFrame({"base": [0.0, 0.0], "new": [-5.0, -3.0]})
    >>> b = pd.DataFrame({"base": [0.0, 0.0, 0.0], "new": [2.0, 4.0, 3.0]})
    >>> mean_ranks({"a": a, "b": b}, n_resamples=99)["mean_rank"].tolist()
    [1.5, 1.5]
    """
    names = list(deltas)
    common = [c for c in deltas[names[0]].columns if all(c in deltas[n].columns for n in names)]
    left_out = sorted({c for n in names for c in deltas[n].columns} - set(common))
    if left_out:
        warnings.warn(
            f"{left_out} are not on every data set and are left out of the ranks",
            UserWarning,
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    point = np.zeros(len(common))
    resampled = np.zeros((n_resamples, len(common)))
    for name in names:
        values = deltas[name][common].to_numpy(dtype=float)
        point += stats.rankdata(values.mean(axis=0))
        rows = rng.integers(0, len(values), size=(n_resamples, len(values)))
        resampled += stats.rankdata(values[rows].mean(axis=1), axis=1)
    point /= len(names)
    resampled /= len(names)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    table = pd.DataFrame(
        {
            "method": common,
            "mean_rank": point,
            "ci_low": low,
            "ci_high": high,
            "datasets": len(names),
        }
    )
    if boards is not None:
        for verdict in ("better", "worse"):
            table[verdict] = [
                sum(
                    bool(((b["method"] == m) & (b["verdict"] == verdict)).any())
                    for b in boards.values()
                )
                for m in common
            ]
    return table.sort_values("mean_rank", kind="stable").reset_index(drop=True)


def _intervals(
    groups: Mapping[str, np.ndarray], confidence: float, n_resamples: int, seed: int
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of the mean of each group: one vectorised
    ``scipy.stats.bootstrap`` call when the groups have the same size (the usual case: each
    task has every replication), else one call per group."""
    sizes = {len(v) for v in groups.values()}
    values = np.stack(list(groups.values())) if len(sizes) == 1 and groups else None
    if values is None or values.shape[1] < 2 or not np.isfinite(values).all():
        return {
            k: _bootstrap_ci(v, np.mean, confidence, n_resamples, seed) for k, v in groups.items()
        }
    result = stats.bootstrap(
        (values,),
        np.mean,
        axis=-1,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    # a constant group has no spread: its interval is the point (as _bootstrap_ci gives)
    flat = np.ptp(values, axis=1) == 0
    low = np.where(flat, values[:, 0], low)
    high = np.where(flat, values[:, 0], high)
    return {k: (float(a), float(b)) for k, a, b in zip(groups, low, high, strict=True)}


def relative_rmse(
    frame: pd.DataFrame,
    reference: str,
    *,
    exclude: Sequence[str] = (),
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """Per label and task, the relative RMSE ``sqrt(MSE / MSE_reference)`` (the reference is
    predicting the training mean) averaged over replications, with a bootstrap interval:
    below 1 the label explains part of the variance, as in the multi-target regression
    literature's aRRMSE.

    Examples
    --------
    >>> frame = pd.DataFrame({"replication": [0, 0], "task": ["a", "a"],
    ...                       "method": ["mean-pred", "net"], "mse": [4.0, 1.0]})
    >>> relative_rmse(frame, "mean-pred")[["method", "task", "rrmse"]].values.tolist()
    [['net', 'a', 0.5]]
    """
    wide = frame.pivot(index=["replication", "task"], columns="method", values="mse")
    if reference not in wide.columns:
        raise ValueError(f"relative RMSE: no {reference!r} rows among {list(wide.columns)}")
    rows = []
    for method in wide.columns:
        if method == reference or method in exclude:
            continue
        ratio = np.sqrt(wide[method] / wide[reference]).dropna()
        groups = {t: v.to_numpy() for t, v in ratio.groupby(level="task", sort=False)}
        intervals = _intervals(groups, confidence, n_resamples, seed)
        for task, v in groups.items():
            low, high = intervals[task]
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "n": len(v),
                    "rrmse": float(v.mean()),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)
