"""Named, reproducible experiments, their replication and their reports."""

from ._baselines import single_vs_multi
from ._comparison_report import write_comparison_report
from ._replicate import config_hash, replicate, run_replication, versions
from ._report import markdown_table, results_table, write_run_report
from ._reviews import ReviewsExperiment, write_reviews_report
from ._store import Store, tidy
from ._structured import (
    DATA_DESCRIPTIONS,
    STRUCTURED_EXPERIMENTS,
    AdultEducationExperiment,
    SentimentDomainsExperiment,
    write_structured_report,
)
from ._synthetic import DESCRIPTIONS, EXPERIMENTS, RunResult, SyntheticExperiment
from ._tune import TuneResult, plot_front, simplex_grid, tune

__all__ = [
    "DATA_DESCRIPTIONS",
    "DESCRIPTIONS",
    "EXPERIMENTS",
    "STRUCTURED_EXPERIMENTS",
    "AdultEducationExperiment",
    "ReviewsExperiment",
    "RunResult",
    "SentimentDomainsExperiment",
    "Store",
    "SyntheticExperiment",
    "TuneResult",
    "config_hash",
    "markdown_table",
    "plot_front",
    "replicate",
    "results_table",
    "run_replication",
    "simplex_grid",
    "single_vs_multi",
    "tidy",
    "tune",
    "versions",
    "write_comparison_report",
    "write_reviews_report",
    "write_run_report",
    "write_structured_report",
]
