"""The ``polytask`` command line: ``list`` and ``run``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .experiments import DESCRIPTIONS, EXPERIMENTS, markdown_table, results_table, write_run_report


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
    run.add_argument("experiment", choices=sorted(EXPERIMENTS))
    run.add_argument("--methods", type=_methods, help="comma-separated, e.g. mse,geometric")
    run.add_argument("--baseline", help="method the others are compared with (default: first)")
    run.add_argument("--n", type=_positive, help="rows drawn (train/stop/test = 5/45/50%%)")
    run.add_argument("--tasks", type=_positive, help="number of tasks")
    run.add_argument("--max-epochs", type=_positive)
    run.add_argument("--patience", type=_positive)
    run.add_argument("--batch-size", type=_positive)
    _common(run)
    return parser


def _cmd_list() -> int:
    for name in sorted(EXPERIMENTS):
        print(f"{name:10s} {DESCRIPTIONS[name]}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
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
    experiment = dataclasses.replace(
        experiment, **{k: v for k, v in changes.items() if v is not None}
    )
    out = args.out or Path("runs") / f"{experiment.name}-{datetime.now():%Y%m%d-%H%M%S}"
    result = experiment.run(args.seed, quiet=args.quiet)
    files = write_run_report(result, out)
    print(f"{experiment.name}, seed {args.seed}: test MSE against the noiseless targets")
    print(markdown_table(results_table(result)))
    print(f"report written to {files['table_md'].parent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polytask`` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        return _cmd_run(args)
    except ValueError as error:
        print(f"polytask: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
