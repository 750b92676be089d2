"""Named, reproducible experiments, their replication and their reports."""

from ._baselines import single_vs_multi
from ._comparison_report import write_comparison_report
from ._replicate import config_hash, replicate, run_replication, versions
from ._report import markdown_table, results_table, write_run_report
from ._reviews import ReviewsExperiment, write_reviews_report
from ._store import Store, tidy
from ._synthetic import DESCRIPTIONS, EXPERIMENTS, RunResult, SyntheticExperiment

__all__ = [
    "DESCRIPTIONS",
    "EXPERIMENTS",
    "ReviewsExperiment",
    "RunResult",
    "Store",
    "SyntheticExperiment",
    "config_hash",
    "markdown_table",
    "replicate",
    "results_table",
    "run_replication",
    "single_vs_multi",
    "tidy",
    "versions",
    "write_comparison_report",
    "write_reviews_report",
    "write_run_report",
]
