"""The ``polytask suite`` command: its options and what it runs."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from .datasets import SUITE_DATASETS
from .experiments._run_suite import run_suite
from .experiments._store import Store
from .experiments._suite import REFERENCES, SUITE_METHODS, TUNED, suite_experiments

DEFAULT_DATA_DIR = Path("../shared/data")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_suite_parser(parser: argparse.ArgumentParser, positive: Any, common: Any) -> None:
    """The options of ``polytask suite`` (``positive``: the CLI's positive-integer type;
    ``common``: adds ``--out``, ``--seed``, ``--device`` and ``--quiet``)."""
    parser.add_argument(
        "--datasets",
        type=_names,
        default=", ".join(SUITE_DATASETS),
        help="comma-separated data sets",
    )
    parser.add_argument(
        "--methods",
        type=_names,
        default=", ".join((*SUITE_METHODS, TUNED)),
        help="comma-separated methods; the first is the baseline of Delta_m%%",
    )
    parser.add_argument(
        "--references",
        type=_names,
        default=", ".join(REFERENCES),
        help="single-task references ('' for none)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the folder holding the data sets' folders",
    )
    parser.add_argument("--replications", type=positive, default=10, help="per data set")
    parser.add_argument("--jobs", type=positive, default=1, help="parallel workers")
    parser.add_argument(
        "--backend", choices=("joblib", "ray"), default="joblib", help="how workers are run"
    )
    parser.add_argument(
        "--budget",
        type=positive,
        help="at most this many epochs per fit, for a quick pass (default: each data set's own)",
    )
    parser.add_argument(
        "--tune-trials", type=positive, default=10, help="fits of the 'tuned' weight search"
    )
    parser.add_argument(
        "--store",
        help="the results store: an SQLite file or an SQLAlchemy URL (default: "
        "<out>/results.sqlite); a second run resumes it",
    )
    common(parser)


def cmd_suite(args: argparse.Namespace, out: Path) -> int:
    """Check every data set's files and the methods, then run the suite and print the
    leaderboard's ranks."""
    methods = args.methods
    experiments = suite_experiments(
        args.datasets,
        args.data_dir,
        methods,
        args.references,
        budget=args.budget,
        tune_trials=args.tune_trials,
        baseline=methods[0] if methods else "",
        device=args.device,
    )
    store = Store(args.store or out / "results.sqlite")
    command = "polytask " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_suite(
        experiments,
        args.replications,
        out,
        store=store,
        seed=args.seed,
        jobs=args.jobs,
        backend=args.backend,
        command=command,
        quiet=args.quiet,
    )
    print(result.files["markdown"].read_text().split("## Delta_m%")[0].rstrip())
    print(
        f"\n{len(experiments)} data sets in {result.seconds:.0f} s; leaderboard written to "
        f"{result.files['markdown']} and {result.files['html']}"
    )
    return 0
