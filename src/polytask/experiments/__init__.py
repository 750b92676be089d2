"""Named, reproducible experiments, their replication and their reports."""

from ._architectures import ARCHITECTURE_DESCRIPTIONS, ARCHITECTURE_EXPERIMENTS
from ._baselines import single_vs_multi
from ._census import (
    MULTI_TASK_MODELS,
    ArchitectureOutcome,
    CensusExperiment,
    CensusFormatError,
    build_architecture,
    read_census,
    write_census_report,
)
from ._comparison_report import write_comparison_report
from ._relatedness import (
    RelatednessExperiment,
    make_relatedness,
    write_relatedness_figure,
    write_relatedness_report,
)
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
    "ARCHITECTURE_DESCRIPTIONS",
    "ARCHITECTURE_EXPERIMENTS",
    "DATA_DESCRIPTIONS",
    "DESCRIPTIONS",
    "EXPERIMENTS",
    "MULTI_TASK_MODELS",
    "STRUCTURED_EXPERIMENTS",
    "AdultEducationExperiment",
    "ArchitectureOutcome",
    "CensusExperiment",
    "CensusFormatError",
    "RelatednessExperiment",
    "ReviewsExperiment",
    "RunResult",
    "SentimentDomainsExperiment",
    "Store",
    "SyntheticExperiment",
    "TuneResult",
    "build_architecture",
    "config_hash",
    "make_relatedness",
    "markdown_table",
    "plot_front",
    "read_census",
    "replicate",
    "results_table",
    "run_replication",
    "simplex_grid",
    "single_vs_multi",
    "tidy",
    "tune",
    "versions",
    "write_census_report",
    "write_comparison_report",
    "write_relatedness_figure",
    "write_relatedness_report",
    "write_reviews_report",
    "write_run_report",
    "write_structured_report",
]
