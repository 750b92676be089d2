"""The report folder of one run: tables, histories and figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..evaluation import metric_info, plot_predictions, plot_task_losses, plot_training_curves
from ._synthetic import RunResult


def interval_text(low: float, high: float, digits: int = 4) -> str:
    """``[low, high]`` to ``digits`` significant digits (the tables'), more where that would
    print two different bounds alike (a ratio interval of 0.99985-1.00002 is not "[1, 1]").

    Examples
    --------
    >>> interval_text(0.81234, 1.21987), interval_text(0.999985, 1.000002)
    ('[0.8123, 1.22]', '[0.99999, 1]')
    """
    for places in range(digits, 10):
        a, b = f"{low:.{places}g}", f"{high:.{places}g}"
        if a != b or low == high:
            break
    return f"[{a}, {b}]"


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (numbers to ``digits`` significant)."""

    def cell(value: object) -> str:
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *body])


def results_table(result: RunResult, metric: str = "mse") -> pd.DataFrame:
    """One row per task: the test metric of each method and its improvement ratios
    (``baseline/method`` for a lower-is-better metric, ``method/baseline`` for a
    higher-is-better one: above 1, the method did better)."""
    rows = []
    base = result.experiment.baseline
    greater = metric_info(metric).greater_is_better
    for task in result.metrics[base]:
        row: dict[str, float | str] = {"task": task}
        for method, values in result.metrics.items():
            row[f"test {metric} ({method})"] = values[task][metric]
        for method, ratios in result.ratios(metric).items():
            label = f"{method}/{base}" if greater else f"{base}/{method}"
            row[f"ratio {label}"] = ratios[task]
        rows.append(row)
    return pd.DataFrame(rows)


def write_run_report(result: RunResult, out: str | Path) -> dict[str, Path]:
    """Write tables (CSV, Markdown), histories, config and figures of ``result`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(result)
    files = {"table_csv": out / "results.csv", "table_md": out / "results.md"}
    table.to_csv(files["table_csv"], index=False)
    experiment = result.experiment
    lines = [
        f"# {experiment.name}: seed {result.seed}",
        "",
        f"Test MSE against the noiseless targets ({len(result.test)} test rows); "
        f"`ratio {experiment.baseline}/X` above 1 means method X beat {experiment.baseline} "
        "on that task.",
        "",
        markdown_table(table),
        "",
        "| method | epochs | best epoch |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {len(h)} | {h.best_epoch} |" for m, h in result.histories.items()]
    files["table_md"].write_text("\n".join(lines) + "\n")
    for method, history in result.histories.items():
        path = out / f"history_{method}.csv"
        history.to_frame().to_csv(path, index=False)
        files[f"history_{method}"] = path
    files["config"] = out / "config.json"
    config = {"seed": result.seed, "config_hash": experiment.config_hash(), **experiment.config()}
    files["config"].write_text(json.dumps(config, indent=2) + "\n")
    files["curves"] = plot_training_curves(result.histories, out / "training_curves.png")
    files["task_losses"] = plot_task_losses(result.histories, out / "task_losses.png")
    clean = {k: v.numpy() for k, v in (result.test.clean_targets or {}).items()}
    files["predictions"] = plot_predictions(
        result.train.x[:, 0].numpy(),
        {k: v.numpy() for k, v in result.train.targets.items()},
        result.test.x[:, 0].numpy(),
        clean,
        result.predictions,
        out / "predictions.png",
    )
    return files
