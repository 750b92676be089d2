"""The report of a replicated comparison: Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

import pandas as pd

from ..datasets._synthetic import GENERATORS, task_notes
from ..evaluation import (
    DELTA_CONVENTION,
    RATIO_CONVENTION,
    IncompleteReplicationsWarning,
    delta_m,
    improvement_ratios,
    plot_delta_m,
    plot_ratio_boxplots,
    summarize,
)
from ._report import interval_text, markdown_table
from ._store import Store


def _pick_config(store: Store, config_hash: str | None) -> str:
    configs = store.configs()
    if configs.empty:
        raise ValueError(f"the store {store.path} holds no results")
    if config_hash is None:
        return str(configs["config_hash"].iloc[-1])  # the most recent configuration
    matches = [h for h in configs["config_hash"] if str(h).startswith(config_hash)]
    if len(matches) != 1:
        raise ValueError(
            f"configuration {config_hash!r} matches {len(matches)} of the stored ones: "
            f"{list(configs['config_hash'])}"
        )
    return matches[0]


def _task_table(per_task: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": per_task["method"],
            "task": per_task["task"],
            "n": per_task["n"],
            "pairs dropped": per_task["n_dropped"],
            "median ratio": per_task["median_ratio"],
            "95% CI (median)": [
                interval_text(a, b)
                for a, b in zip(per_task["median_ci_low"], per_task["median_ci_high"], strict=True)
            ],
            "IQR": [
                interval_text(a, b) for a, b in zip(per_task["q25"], per_task["q75"], strict=True)
            ],
            "geo-mean ratio": per_task["gmean_ratio"],
            "95% CI (geo-mean)": [
                interval_text(a, b)
                for a, b in zip(per_task["gmean_ci_low"], per_task["gmean_ci_high"], strict=True)
            ],
            "win rate": per_task["win_rate"],
            "Wilcoxon p": per_task["wilcoxon_p"],
            "Holm p": per_task["holm_p"],
            "test": per_task["test"],
            "note": per_task["note"],
        }
    )


def _overall_table(overall: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": overall["method"],
            "n": overall["n"],
            "incomplete (left out)": overall["n_incomplete"],
            "mean Delta_m% (lower is better)": overall["delta_m_mean"],
            "95% CI": [
                interval_text(a, b)
                for a, b in zip(overall["delta_m_ci_low"], overall["delta_m_ci_high"], strict=True)
            ],
            "median Delta_m%": overall["delta_m_median"],
            "geo-mean ratio (>1 better)": overall["gmean_ratio"],
            "95% CI (geo-mean)": [
                interval_text(a, b)
                for a, b in zip(overall["gmean_ci_low"], overall["gmean_ci_high"], strict=True)
            ],
            "note": overall["note"],
        }
    )


def _means_table(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    means = frame.pivot_table(index="task", columns="method", values=metric, aggfunc="median")
    means.columns = [f"median {metric} ({m})" for m in means.columns]
    return means.reset_index()


def _task_notes(config: dict) -> dict[str, str] | None:
    """Each task's parameter (noise sd, phase) for a hetero or phase comparison."""
    if config.get("generator") in GENERATORS and "n_tasks" in config:
        return task_notes(config["generator"], config["n_tasks"])
    return None


def write_comparison_report(
    store: Store | str | Path,
    out: str | Path,
    *,
    config_hash: str | None = None,
    metric: str | None = None,
    n_resamples: int = 9999,
) -> dict[str, Path]:
    """Statistics, boxplots and Delta_m% of one stored comparison, as Markdown and HTML.

    ``config_hash`` (a prefix is enough) picks the comparison; by default the most recent one
    in the store. ``metric`` defaults to the one the experiment's configuration names (MSE
    for the synthetic experiments).
    """
    store = store if isinstance(store, Store) else Store(store)
    key = _pick_config(store, config_hash)
    config = store.config(key)
    baseline = config["baseline"]
    metric = metric or config.get("metric", "mse")
    synthetic = "generator" in config  # scored against the noiseless targets
    results = store.replications(key)
    frame = store.frame(key)
    if frame.empty:
        raise ValueError(f"configuration {key} has no finished replications yet")
    others = sorted(set(frame["method"]) - {baseline})
    if not others:
        raise ValueError(
            f"configuration {key} holds the baseline {baseline!r} only: nothing to compare it "
            "with (run two methods or models or more)"
        )
    per_task, overall = summarize(frame, baseline, metric, n_resamples=n_resamples)
    with warnings.catch_warnings():  # summarize has already warned about these
        warnings.simplefilter("ignore", IncompleteReplicationsWarning)
        deltas = delta_m(frame, baseline, metric)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "ratios": plot_ratio_boxplots(
            improvement_ratios(frame, baseline, metric),
            baseline,
            out / "ratios.png",
            metric,
            task_notes=_task_notes(config),
        ),
        "delta_m": plot_delta_m(deltas, baseline, out / "delta_m.png"),
    }
    per_task.to_csv(out / "statistics_per_task.csv", index=False)
    overall.to_csv(out / "statistics_overall.csv", index=False)
    frame.to_csv(out / "replications.csv", index=False)
    indices = sorted(r["replication"] for r in results)
    version_sets = sorted({json.dumps(r["versions"], sort_keys=True) for r in results})
    meta = [
        ("experiment", config["experiment"]),
        ("methods", ", ".join(config["methods"])),
        ("baseline", baseline),
        ("replications", str(len(results))),
        (
            "seeds",
            f"replications {indices[0]}..{indices[-1]}, child i of "
            f"numpy.random.SeedSequence({config.get('base_seed', '?')})"
            if indices
            else "-",
        ),
        ("configuration hash", key),
        ("metric", f"test {metric}" + (" (against the noiseless targets)" * synthetic)),
        ("versions", "; ".join(version_sets)),
    ]
    sections = [
        ("Overall: Delta_m%", DELTA_CONVENTION, _overall_table(overall)),
        ("Per task: improvement ratios", RATIO_CONVENTION, _task_table(per_task)),
        ("Per task: median test metric", "", _means_table(frame, metric)),
    ]
    title = f"{config['experiment']}: {', '.join(config['methods'])} ({len(results)} replications)"
    md = [f"# {title}", "", *[f"- **{k}**: {v}" for k, v in meta], ""]
    for heading, note, table in sections:
        md += [f"## {heading}", "", *([f"_{note}_", ""] if note else []), markdown_table(table), ""]
    cautions = _cautions(per_task, overall)
    if cautions:
        md += ["## Warnings", "", *[f"- {c}" for c in cautions], ""]
    md += [
        f"{_METHODS_NOTE} Confidence intervals: percentile bootstrap, {n_resamples} resamples.",
        "",
        "![improvement ratios](ratios.png)",
        "",
        "![Delta_m%](delta_m.png)",
        "",
    ]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md))
    files["html"] = out / "report.html"
    files["html"].write_text(_html(title, meta, sections, files, n_resamples, cautions))
    return files


_METHODS_NOTE = (
    "Paired two-sided Wilcoxon signed-rank tests, on the log ratios of a ratio-scale metric "
    "(MSE, MAE) and on the raw differences otherwise (column `test`); each method is paired "
    "with the baseline alone (`pairs dropped`: replications where one of them lacks a value); "
    "Holm adjustment across the tasks of each method. Delta_m% averages over every task: "
    "replications lacking a task are left out and counted."
)


def _cautions(per_task: pd.DataFrame, overall: pd.DataFrame) -> list[str]:
    """The notes of the statistics (too few replications) and incomplete replications."""
    cautions = []
    few = per_task.loc[per_task["note"] != "", ["method", "task", "n", "n_test"]]
    if not few.empty:
        cases = ", ".join(
            f"{m}/{t} (n={n}" + (f", {n_test} non-zero differences)" if n_test < n else ")")
            for m, t, n, n_test in few.itertuples(index=False)
        )
        cautions.append(
            f"{cases}: at most five non-zero paired differences (the test drops ties), where a "
            "two-sided Wilcoxon test cannot reach p < 0.05; read the intervals and p-values as "
            "descriptive only."
        )
    incomplete = overall.loc[overall["n_incomplete"] > 0, ["method", "n_incomplete"]]
    for method, count in incomplete.itertuples(index=False):
        cautions.append(f"{method}: {count} replications lack a task and are left out of Delta_m%.")
    dropped = per_task.loc[per_task["n_dropped"] > 0, ["method", "task", "n_dropped"]]
    for method, task, count in dropped.itertuples(index=False):
        cautions.append(f"{method}/{task}: {count} replications without a pair were dropped.")
    return cautions


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(
    title: str,
    meta: list[tuple[str, str]],
    sections: list[tuple[str, str, pd.DataFrame]],
    files: dict[str, Path],
    n_resamples: int,
    cautions: list[str],
) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:0.3em 0.6em;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><ul>",
        *[f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in meta],
        "</ul>",
    ]
    if cautions:
        parts += ["<h2>Warnings</h2><ul>", *[f"<li>{html.escape(c)}</li>" for c in cautions]]
        parts.append("</ul>")
    for heading, note, table in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f"<p><i>{html.escape(note)}</i></p>")
        parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
    parts += [
        f"<p>{html.escape(_METHODS_NOTE)} Percentile bootstrap ({n_resamples} resamples).</p>",
        _image(files["ratios"]),
        _image(files["delta_m"]),
        "</body></html>",
    ]
    return "\n".join(parts)
