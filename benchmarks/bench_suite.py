"""The benchmark suite's own overhead: ``polytask suite`` (store, scheduling, leaderboard)
against the same fits run in a bare loop, in the same run.

Both variants fit the same data sets, methods, references and replication seeds with the same
torch thread count. The suite variant is ``run_suite`` into a fresh store each round (with one
job it runs in this process: no worker start-up); the bare variant calls each experiment's
``run`` per replication seed and keeps the metrics in a list. Rounds alternate, so the
machine's drifts hit both alike; each round's ratio is suite / bare wall time.

Usage: python benchmarks/bench_suite.py [--rounds 5] [--replications 3] [--budget 30]
Last line: ``suite_vs_bare_fits: R`` (median ratio; at most 1.05 is the goal).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _rounds import in_turn
from polytask.experiments._replicate import available_cores, replication_seed
from polytask.experiments._run_suite import run_suite
from polytask.experiments._suite import suite_experiments

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def suite_seconds(experiments: list, replications: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_suite(experiments, replications, out, quiet=True, n_resamples=9999)
        return time.perf_counter() - started


def bare_seconds(experiments: list, replications: int) -> float:
    torch.set_num_threads(available_cores())  # what replicate gives one job
    started = time.perf_counter()
    metrics = [
        e.run(replication_seed(0, i), quiet=True).metrics
        for e in experiments
        for i in range(replications)
    ]
    assert len(metrics) == len(experiments) * replications
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replications", type=int, default=3)
    # at most 30 epochs a fit (the data sets' own budgets are 60-150): fits of a second or
    # two, as in a suite; shorter ones measure Python's start-up costs, not the suite's
    parser.add_argument("--budget", type=int, default=30, help="at most this many epochs a fit")
    parser.add_argument("--datasets", default="energy,concrete,student")
    parser.add_argument("--methods", default="mean,uw,upgrad")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()
    experiments = suite_experiments(
        args.datasets.split(","),
        args.data_dir,
        args.methods.split(","),
        ("single-task", "linear"),
        budget=args.budget,
        device="cpu",
    )
    print(
        f"{available_cores()} cores, torch {torch.__version__}; data sets {args.datasets}, "
        f"methods {args.methods} + single-task + linear, {args.replications} replications, "
        f"{args.budget} epochs per fit; {args.rounds} alternating rounds"
    )
    bare_seconds(experiments, 1)  # warm-up: imports, file caches, first-call costs
    suite, bare, ratios = [], [], []
    for round_ in range(args.rounds):
        sides = in_turn(round_, (suite_seconds, bare_seconds))
        times = {f.__name__: f(experiments, args.replications) for f in sides}
        suite.append(times["suite_seconds"])
        bare.append(times["bare_seconds"])
        ratios.append(suite[-1] / bare[-1])
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(
        f"suite: {statistics.median(suite):.2f} s (median; rounds {[round(s, 2) for s in suite]})"
    )
    print(f"bare:  {statistics.median(bare):.2f} s (median; rounds {[round(s, 2) for s in bare]})")
    print(
        f"suite / bare per round: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
        f"IQR [{quartiles[0]:.3f}, {quartiles[2]:.3f}], max {max(ratios):.3f})"
    )
    print(f"suite_vs_bare_fits: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
