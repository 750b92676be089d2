"""The ``polytask`` command line: ``list``, ``run``, ``compare`` and ``report``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .experiments import (
    DESCRIPTIONS,
    EXPERIMENTS,
    ReviewsExperiment,
    SyntheticExperiment,
    config_hash,
    markdown_table,
    replicate,
    results_table,
    write_comparison_report,
    write_reviews_report,
    write_run_report,
)

DATA_EXPERIMENTS = {
    "reviews": "movie/restaurant/product sentiment + site of a sentence, one dataset per task "
    "(needs --data-dir sentiment_labelled_sentences/)",
}


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods:
        raise argparse.ArgumentTypeError("give at least one method, e.g. mse,geometric")
    return methods


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="report folder (default runs/<name>-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polytask", description="Multi-task learning experiments on PyTorch."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the built-in experiments")
    run = commands.add_parser("run", help="run one experiment and write its report")
    _experiment_options(run, with_data=True)
    _common(run)
    compare = commands.add_parser(
        "compare", help="replicate an experiment over many seeds and compare methods"
    )
    _experiment_options(compare)
    compare.add_argument("--replications", type=_positive, default=10)
    compare.add_argument("--jobs", type=_positive, default=1, help="parallel workers")
    compare.add_argument("--backend", choices=("joblib", "ray"), default="joblib")
    compare.add_argument("--store", type=Path, help="SQLite store (default <out>/results.sqlite)")
    _common(compare)
    report = commands.add_parser("report", help="write the report of a stored comparison")
    report.add_argument("store", type=Path, help="the SQLite store of a compare run")
    report.add_argument("--config", help="configuration hash (prefix) to report; default latest")
    report.add_argument("--out", type=Path, help="report folder (default: beside the store)")
    return parser


def _experiment_options(parser: argparse.ArgumentParser, with_data: bool = False) -> None:
    names = sorted(EXPERIMENTS) + (sorted(DATA_EXPERIMENTS) if with_data else [])
    parser.add_argument("experiment", choices=names)
    if with_data:
        parser.add_argument("--data-dir", type=Path, help="folder of a real-data experiment")
    parser.add_argument("--methods", type=_methods, help="comma-separated, e.g. mse,geometric")
    parser.add_argument("--baseline", help="method the others are compared with (default: first)")
    parser.add_argument("--n", type=_positive, help="rows drawn (train/stop/test = 5/45/50%%)")
    parser.add_argument("--tasks", type=_positive, help="number of tasks")
    parser.add_argument("--max-epochs", type=_positive)
    parser.add_argument("--patience", type=_positive)
    parser.add_argument("--batch-size", type=_positive)


def _cmd_list() -> int:
    for name, text in sorted({**DESCRIPTIONS, **DATA_EXPERIMENTS}.items()):
        print(f"{name:10s} {text}")
    return 0


def _experiment(args: argparse.Namespace) -> SyntheticExperiment:
    experiment = EXPERIMENTS[args.experiment]()
    changes = {
        "n": args.n,
        "n_tasks": args.tasks,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "methods": args.methods,
        "baseline": args.baseline or (args.methods[0] if args.methods else None),
        "device": args.device,
    }
    return dataclasses.replace(experiment, **{k: v for k, v in changes.items() if v is not None})


def _out(args: argparse.Namespace, name: str) -> Path:
    return args.out or Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def _cmd_reviews(args: argparse.Namespace) -> int:
    if args.data_dir is None:
        raise ValueError("the reviews experiment needs --data-dir (sentiment_labelled_sentences/)")
    changes = {
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
    }
    experiment = ReviewsExperiment(
        args.data_dir,
        seed=args.seed,
        device=args.device,
        **{k: v for k, v in changes.items() if v is not None},
    )
    out = _out(args, experiment.name)
    result = experiment.run(quiet=args.quiet)
    report = write_reviews_report(result, experiment, out)
    print(markdown_table(result["table"]))
    print(f"Delta_m% multi-task vs single-task: {result['delta_m']:.2f} (lower is better)")
    print(f"report written to {report}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.experiment in DATA_EXPERIMENTS:
        return _cmd_reviews(args)
    experiment = _experiment(args)
    out = _out(args, experiment.name)
    result = experiment.run(args.seed, quiet=args.quiet)
    files = write_run_report(result, out)
    print(f"{experiment.name}, seed {args.seed}: test MSE against the noiseless targets")
    print(markdown_table(results_table(result)))
    print(f"report written to {files['table_md'].parent}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    experiment = _experiment(args)
    out = _out(args, f"compare-{experiment.name}")
    store = args.store or out / "results.sqlite"
    replicate(
        experiment,
        args.replications,
        seed=args.seed,
        jobs=args.jobs,
        backend=args.backend,
        store=store,
        quiet=args.quiet,
    )
    key = config_hash(experiment, args.seed)
    files = write_comparison_report(store, out, config_hash=key)
    print(files["markdown"].read_text().split("![")[0].rstrip())
    print(f"\nreport written to {files['markdown']} and {files['html']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if not args.store.exists():
        raise ValueError(f"no store at {args.store}")
    out = args.out or args.store.parent
    files = write_comparison_report(args.store, out, config_hash=args.config)
    print(f"report written to {files['markdown']} and {files['html']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polytask`` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        commands = {"run": _cmd_run, "compare": _cmd_compare, "report": _cmd_report}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"polytask: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
