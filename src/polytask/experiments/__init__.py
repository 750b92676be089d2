"""Named, reproducible experiments and their reports."""

from ._report import markdown_table, results_table, write_run_report
from ._synthetic import DESCRIPTIONS, EXPERIMENTS, RunResult, SyntheticExperiment

__all__ = [
    "DESCRIPTIONS",
    "EXPERIMENTS",
    "RunResult",
    "SyntheticExperiment",
    "markdown_table",
    "results_table",
    "write_run_report",
]
