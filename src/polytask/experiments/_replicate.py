"""Many replications of an experiment, in parallel, resumable through the store."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ._store import Store, tidy
from ._synthetic import SyntheticExperiment, hash_config

Backend = Literal["joblib", "ray"]


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the results."""
    found = {"python": platform.python_version()}
    for name in ("polytask", "torch", "torchjd", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def replication_config(experiment: SyntheticExperiment, seed: int) -> dict[str, Any]:
    """What identifies a set of replications: the experiment's configuration and base seed."""
    return {"experiment": experiment.name, "base_seed": seed, **experiment.config()}


def config_hash(experiment: SyntheticExperiment, seed: int) -> str:
    """The key of a set of replications in the store."""
    return hash_config(replication_config(experiment, seed))


def run_replication(
    experiment: SyntheticExperiment, replication: int, seed: int, threads: int
) -> dict[str, Any]:
    """One replication in a worker: fresh data from ``seed``, every method, test metrics."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    result = experiment.run(seed, quiet=True)
    return {
        "replication": replication,
        "seed": seed,
        # results are bit-identical for the same seed and the same torch thread count
        "versions": {**versions(), "torch_threads": threads},
        "seconds": time.perf_counter() - started,
        "metrics": result.metrics,
        "histories": {method: h.to_dict() for method, h in result.histories.items()},
    }


def _joblib(jobs: int, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered")
    yield from parallel(delayed(run_replication)(*call) for call in calls)


def _ray(jobs: int, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "--backend ray needs the 'ray' extra: pip install 'polytask[ray]'"
        ) from error
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        options = {} if address else {"num_cpus": jobs}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **options)
    try:
        remote = ray.remote(num_cpus=1)(run_replication)
        pending = [remote.remote(*call) for call in calls]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def replicate(
    experiment: SyntheticExperiment,
    replications: int = 10,
    *,
    seed: int = 0,
    jobs: int = 1,
    backend: Backend = "joblib",
    store: str | Path | Store | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """Run ``replications`` replications of ``experiment``; return tidy test metrics.

    Replication ``i`` draws its data, initial weights and shuffling from seed ``seed + i`` and
    fits every method of the experiment on the same data and split. With a ``store``, each
    finished replication is committed at once; calling again with the same experiment and seed
    runs only the missing replications.

    Parameters
    ----------
    experiment
        What to replicate (its ``methods`` and ``baseline`` included).
    replications
        How many replications the result should hold.
    seed
        Base seed.
    jobs
        Parallel workers; each limits torch to ``cores // jobs`` threads.
    backend
        ``"joblib"`` (local processes) or ``"ray"`` (Ray tasks; connects to ``RAY_ADDRESS``
        when set, else starts a local Ray).
    store
        A :class:`Store` or the path of its SQLite file; ``None`` keeps results in memory only.
    quiet
        No progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per replication, method and task: ``replication, seed, method, task`` and one
        column per metric.

    Examples
    --------
    >>> experiment = SyntheticExperiment("hetero", n=200, n_tasks=2, max_epochs=2)
    >>> frame = replicate(experiment, 2, quiet=True)
    >>> len(frame)  # 2 replications x 2 methods x 2 tasks
    8
    """
    if replications < 1 or jobs < 1:
        raise ValueError(f"replications and jobs must be positive, got {replications}, {jobs}")
    if backend not in ("joblib", "ray"):
        raise ValueError(f"backend must be 'joblib' or 'ray', got {backend!r}")
    if store is not None and not isinstance(store, Store):
        store = Store(store)
    key = config_hash(experiment, seed)
    done: set[int] = set()
    results: list[dict[str, Any]] = []
    if store is not None:
        store.register(key, experiment.name, replication_config(experiment, seed))
        done = store.finished(key)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    calls = [(experiment, i, seed + i, threads) for i in range(replications) if i not in done]
    if calls:
        execute = _joblib if backend == "joblib" else _ray
        outer_threads = torch.get_num_threads()
        try:
            with _progress(quiet) as progress:
                bar = progress.add_task(
                    f"{experiment.name} x{len(experiment.methods)} methods",
                    total=replications,
                    completed=replications - len(calls),
                )
                for result in execute(jobs, calls):
                    if store is not None:
                        store.add(key, result)
                    results.append(result)
                    progress.advance(bar)
        finally:
            torch.set_num_threads(outer_threads)  # jobs=1 runs in this process
    if store is not None:
        results = [r for r in store.replications(key) if r["replication"] < replications]
    results.sort(key=lambda r: r["replication"])
    return tidy(results)


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("replications"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=quiet,
    )
