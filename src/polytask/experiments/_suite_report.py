"""The leaderboard of a benchmark suite, in Markdown and self-contained HTML."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation._leaderboard import (
    ALPHA,
    dataset_board,
    delta_long,
    delta_table,
    mean_ranks,
    relative_rmse,
)
from ..evaluation._statistics import FEW_REPLICATIONS_NOTE, MIN_TESTABLE_N, ZERO_METHOD
from ._report import markdown_table
from ._suite import REFERENCES, TRAIN_MEAN, TUNED, DatasetExperiment

# marks a Delta_m% whose test is significant in the direction opposite to its mean
DISPUTED = "†"


def _disputed(board: pd.DataFrame) -> pd.Series:
    """Rows whose adjusted p is below 0.05 but which have no verdict: the test's direction
    (``direction``) and the mean Delta_m%'s sign disagree."""
    return (board["holm_p"] < ALPHA) & (board["verdict"] == "")


def conventions(baseline: str) -> str:
    """How to read the leaderboard, for its baseline."""
    return (
        "Delta_m%: mean over tasks of the relative change of each task's metric against "
        f"`{baseline}`, signed so that lower is better for every metric; negative means better "
        f"than `{baseline}`. Intervals: 95% percentile bootstrap over replications. Test: "
        "two-sided Wilcoxon signed-rank of the per-replication Delta_m% (paired: same split, "
        f"seed and initial weights; zero differences dropped, zero_method='{ZERO_METHOD}', so "
        "p < 0.05 needs six non-zero ones), Holm-adjusted across the methods of a data set (the "
        "single-task references form their own family); **bold**: adjusted p < 0.05 in the "
        "direction of the mean (the test's direction: the sign whose ranks sum larger); "
        f"{DISPUTED}: adjusted p < 0.05 the other way from the mean (e.g. one outlying "
        "replication), no verdict. Mean "
        "rank: 1 is best (lowest mean Delta_m%), averaged over data sets; its interval "
        "resamples each data set's replications. Relative RMSE: sqrt(MSE / MSE of predicting "
        "the training mean), below 1 is better."
    )


@dataclass
class Leaderboard:
    """The suite's tables: per data set (:func:`dataset_board`), across data sets
    (:func:`mean_ranks`) and the relative RMSE of the regression sets."""

    boards: dict[str, pd.DataFrame]
    ranks: pd.DataFrame
    rrmse: pd.DataFrame
    against_tuned: dict[str, pd.DataFrame] = field(default_factory=dict)

    def delta_cells(self, against_tuned: bool = False) -> pd.DataFrame:
        """Methods x data sets: ``mean [low, high]``, bold when significant with a verdict
        (against the baseline, or against the tuned static weighting), followed by
        :data:`DISPUTED` when the test is significant against the mean's sign."""
        columns = {}
        for name, board in (self.against_tuned if against_tuned else self.boards).items():
            cells = {}
            for row, disputed in zip(board.itertuples(), _disputed(board), strict=True):
                text = f"{row.delta_m:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
                if row.verdict:
                    text = f"**{text}**"
                cells[row.method] = f"{text} {DISPUTED}" if disputed else text
            columns[name] = cells
        table = pd.DataFrame(columns)
        table.index.name = "method"
        return table.fillna("").reset_index()


def leaderboard(
    frames: Mapping[str, pd.DataFrame],
    experiments: Mapping[str, DatasetExperiment],
    *,
    n_resamples: int = 9999,
    seed: int = 0,
) -> Leaderboard:
    """The suite's statistics from each data set's tidy test metrics (``replicate``'s frame).

    Examples
    --------
    >>> rows = [{"replication": r, "task": t, "method": m, "mse": v + r}
    ...         for r in range(6) for t in ("heating", "cooling")
    ...         for m, v in (("mean", 2.0), ("uw", 1.0), ("train-mean", 4.0))]
    >>> experiment = DatasetExperiment("energy", methods=("mean", "uw"), references=())
    >>> board = leaderboard({"energy": pd.DataFrame(rows)}, {"energy": experiment}, n_resamples=99)
    >>> board.boards["energy"]["method"].tolist(), board.ranks["method"].tolist()
    (['mean', 'uw'], ['uw', 'mean'])
    """
    boards, deltas, rrmse, against_tuned = {}, {}, [], {}
    for name, frame in frames.items():
        experiment = experiments[name]
        if TUNED in experiment.methods and experiment.baseline != TUNED:
            # Xin et al. 2022, Kurin et al. 2022: is a method better than tuned static weights?
            against_tuned[name] = dataset_board(
                frame,
                TUNED,
                experiment.metric,
                exclude=(TRAIN_MEAN,),
                references=REFERENCES,
                n_resamples=n_resamples,
                seed=seed,
            )
        long = delta_long(frame, experiment.baseline, experiment.metric, (TRAIN_MEAN,))
        boards[name] = dataset_board(
            frame,
            experiment.baseline,
            experiment.metric,
            exclude=(TRAIN_MEAN,),
            references=REFERENCES,
            n_resamples=n_resamples,
            seed=seed,
            long=long,
        )
        deltas[name] = delta_table(
            frame, experiment.baseline, experiment.metric, (TRAIN_MEAN,), long=long, where=name
        )
        if experiment.spec.regression:
            part = relative_rmse(frame, TRAIN_MEAN, n_resamples=n_resamples, seed=seed)
            rrmse.append(part.assign(dataset=name))
    ranks = mean_ranks(deltas, boards, n_resamples=min(n_resamples, 2000), seed=seed)
    table = pd.concat(rrmse, ignore_index=True) if rrmse else pd.DataFrame()
    return Leaderboard(boards, ranks, table, against_tuned)


def _sections(board: Leaderboard, experiments: Mapping[str, DatasetExperiment]) -> list:
    """(title, paragraph, table) triples, rendered as Markdown and as HTML alike."""
    n_sets = len(board.boards)
    ranks = board.ranks.assign(
        **{
            "mean rank [95% CI]": [
                f"{r.mean_rank:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
                for r in board.ranks.itertuples()
            ]
        }
    )[["method", "mean rank [95% CI]", "better", "worse"]]
    baseline = next(iter(experiments.values())).baseline
    ranks = ranks.rename(
        columns={
            "better": f"better than {baseline} (of {n_sets})",
            "worse": f"worse than {baseline} (of {n_sets})",
        }
    )
    sections = [
        ("Mean rank across data sets", "", ranks),
        (
            f"Delta_m% against {baseline} [95% CI]",
            _disputed_note(board.boards.values()),
            board.delta_cells(),
        ),
    ]
    if board.against_tuned:
        counts = pd.DataFrame(
            [
                {
                    "method": method,
                    "better than tuned": sum(
                        bool(((b["method"] == method) & (b["verdict"] == "better")).any())
                        for b in board.against_tuned.values()
                    ),
                    "worse than tuned": sum(
                        bool(((b["method"] == method) & (b["verdict"] == "worse")).any())
                        for b in board.against_tuned.values()
                    ),
                }
                for method in board.delta_cells(against_tuned=True)["method"]
            ]
        )
        cells = board.delta_cells(against_tuned=True).merge(counts, on="method")
        sections.append(
            (
                f"Delta_m% against the tuned static weighting (`{TUNED}`) [95% CI]",
                "The same statistics with `tuned` as the baseline: negative means better than "
                "static weights tuned on the replication's stop set; bold: Holm-adjusted "
                "p < 0.05 in the direction of the mean. The counts are data sets (of "
                f"{len(board.against_tuned)})."
                + _disputed_note(board.against_tuned.values(), lead=" "),
                cells,
            )
        )
    for name, table in board.boards.items():
        experiment = experiments[name]

        def p_text(p: float) -> str:
            return "" if np.isnan(p) else f"{p:.2g}"

        intervals = zip(table["ci_low"], table["ci_high"], strict=True)
        shown = pd.DataFrame(
            {
                "method": table["method"],
                "n": table["n"],
                "Delta_m%": table["delta_m"].map(lambda v: f"{v:+.2f}"),
                "95% CI": [f"[{a:+.2f}, {b:+.2f}]" for a, b in intervals],
                "geo-mean ratio": table["gmean_ratio"].round(3),
                "Wilcoxon p": table["wilcoxon_p"].map(p_text),
                "Holm p": table["holm_p"].map(p_text),
                "verdict": _verdict_text(table),
            }
        )
        tasks = ", ".join(t.name for t in experiment.tasks())
        text = f"{experiment.spec.description}. Tasks: {tasks}; metric: test {experiment.metric}."
        text += _coverage_note(table)
        sections.append((f"{name}", text, shown))
    if not board.rrmse.empty:
        cells = board.rrmse.assign(
            column=board.rrmse["dataset"] + "/" + board.rrmse["task"],
            cell=[
                f"{v:.3f} [{a:.3f}, {b:.3f}]"
                for v, a, b in zip(
                    board.rrmse.rrmse, board.rrmse.ci_low, board.rrmse.ci_high, strict=True
                )
            ],
        )
        order = list(dict.fromkeys(cells["method"]))
        wide = cells.pivot(index="method", columns="column", values="cell").loc[order]
        sections.append(("Relative RMSE per target (regression sets)", "", wide.reset_index()))
    return sections


def _verdict_text(table: pd.DataFrame) -> list[str]:
    """The verdict column as shown: a disputed row says why it has none."""
    mean = np.where(table["delta_m"] < 0, "better", np.where(table["delta_m"] > 0, "worse", "0"))
    return [
        f"none {DISPUTED} (test: {d}, mean: {m})" if disputed else v
        for v, d, m, disputed in zip(
            table["verdict"], table["direction"], mean, _disputed(table), strict=True
        )
    ]


def _disputed_note(boards: Iterable[pd.DataFrame], lead: str = "") -> str:
    """The footnote of :data:`DISPUTED`, when some board has such a row."""
    if not any(_disputed(b).any() for b in boards):
        return ""
    return (
        f"{lead}{DISPUTED}: the Wilcoxon test is significant (Holm p < 0.05) in the direction "
        "opposite to the mean Delta_m% (a skewed spread, e.g. one outlying replication): no "
        "verdict, not bold, not counted."
    )


def _coverage_note(table: pd.DataFrame) -> str:
    """What a data set's table cannot show by itself: replications left out of a method's row
    (a task's metric missing: it is dropped, never averaged over fewer tasks), and too few
    non-zero differences for the Wilcoxon test to reach p < 0.05 (``n_test <= 5``: zero
    differences are dropped, so this can happen with more replications)."""
    runs = int(table["n"].iloc[0])  # the baseline's replications
    short = {r.method: runs - int(r.n) for r in table.iloc[1:].itertuples() if int(r.n) < runs}
    note = ""
    if short:
        listed = ", ".join(f"{k} of {m}" for m, k in short.items())
        note += f" Replications left out for lacking a task's metric: {listed} (of {runs})."
    tested = table.iloc[1:]
    if len(tested) and tested["n_test"].min() < MIN_TESTABLE_N:
        note += f" {FEW_REPLICATIONS_NOTE}."
        zeros = [r for r in tested.itertuples() if r.n_test < min(r.n, MIN_TESTABLE_N)]
        if zeros:
            listed = ", ".join(f"{r.method} {r.n_test} of {r.n}" for r in zeros)
            note += f" Non-zero Delta_m% (what the test ranks): {listed}."
    elif runs < MIN_TESTABLE_N:  # no method to test: the replications alone
        note += f" {FEW_REPLICATIONS_NOTE}."
    return note


def _bold(text: str) -> str:
    """Markdown's ``**x**`` as HTML's ``<b>x</b>`` (in text already escaped)."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def write_leaderboard(
    board: Leaderboard,
    experiments: Mapping[str, DatasetExperiment],
    out: str | Path,
    *,
    command: str = "",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """``leaderboard.md``, ``leaderboard.html`` (self-contained: no external file or script)
    and the tables as CSV into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(board, experiments)
    lines = ["# Benchmark suite leaderboard", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    text = conventions(next(iter(experiments.values())).baseline)
    lines += [*notes, "", text, ""] if notes else [text, ""]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>polytask suite leaderboard"
        "</title><style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:.2em .5em;text-align:left}th{background:#eee}</style></head><body>",
        "<h1>Benchmark suite leaderboard</h1>",
    ]
    if command:
        parts.append(f"<pre>{html.escape(command)}</pre>")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<p>{_bold(html.escape(text))}</p>")
    for title, text, table in sections:
        lines += [f"## {title}", ""] + ([text, ""] if text else []) + [markdown_table(table), ""]
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        parts.append(_bold(table.to_html(index=False, escape=True, na_rep="")))
    parts.append("</body></html>")
    paths = {"markdown": out / "leaderboard.md", "html": out / "leaderboard.html"}
    paths["markdown"].write_text("\n".join(lines))
    paths["html"].write_text("\n".join(parts))
    board.ranks.to_csv(out / "ranks.csv", index=False)
    pd.concat([b.assign(dataset=n) for n, b in board.boards.items()]).to_csv(
        out / "datasets.csv", index=False
    )
    if not board.rrmse.empty:
        board.rrmse.to_csv(out / "relative_rmse.csv", index=False)
    return paths
