"""Replications per minute with one worker and with two, in the same run.

Each replication is a shortened heteroscedastic experiment (both methods, fresh data per seed).
With ``--jobs 1`` the replications run in this process with torch on every core; with
``--jobs 2`` two joblib worker processes each limit torch to half the cores. Worker start-up
(importing torch) is counted; joblib keeps its workers between rounds.

Usage: python benchmarks/bench_replicate.py [--replications 4] [--rounds 5]
Last line: ``jobs2_vs_jobs1: R`` (replications per minute with 2 jobs / with 1 job).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _rounds import in_turn, spread
from polytask.experiments import SyntheticExperiment, replicate


def rate(experiment: SyntheticExperiment, replications: int, jobs: int, seed: int) -> float:
    started = time.perf_counter()
    replicate(experiment, replications, jobs=jobs, quiet=True, seed=seed)
    return replications / (time.perf_counter() - started) * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=4, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    experiment = SyntheticExperiment(
        "hetero", n=args.n, max_epochs=args.epochs, patience=args.epochs, device="cpu"
    )
    print(
        f"{os.cpu_count()} cores; hetero n={args.n}, {args.epochs} epochs, 2 methods; "
        f"{args.rounds} alternating rounds of {args.replications} replications per setting"
    )
    rates: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        # alternate the settings and which goes first, so that the machine's drifts hit both
        # alike; both settings of a round run the same seeds
        for jobs in in_turn(round_, (1, 2)):
            rates[jobs].append(rate(experiment, args.replications, jobs, seed=1000 * round_))
    for jobs in (1, 2):
        each = ", ".join(f"{r:.1f}" for r in rates[jobs])
        print(
            f"--jobs {jobs}: {statistics.median(rates[jobs]):6.1f} replications/minute "
            f"(median; rounds: {each})"
        )
    ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
    median = statistics.median(ratios)
    print(f"--jobs 2 / --jobs 1 per round: median {median:.2f} ({spread(ratios)})")
    print(f"jobs2_vs_jobs1: {median:.2f}")


if __name__ == "__main__":
    main()
