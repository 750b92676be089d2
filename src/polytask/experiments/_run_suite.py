"""``polytask suite``: data sets x methods x replications into one resumable store, then the
leaderboard."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..evaluation._statistics import FEW_REPLICATIONS_NOTE, MIN_TESTABLE_N
from ._replicate import Backend, ray_session, replicate
from ._store import Store
from ._suite import DatasetExperiment
from ._suite_report import Leaderboard, leaderboard, write_leaderboard


@dataclass
class SuiteResult:
    """Each data set's tidy test metrics, the leaderboard and the files written."""

    frames: dict[str, pd.DataFrame]
    board: Leaderboard
    files: dict[str, Path]
    seconds: float


def run_suite(
    experiments: Sequence[DatasetExperiment],
    replications: int,
    out: str | Path,
    *,
    store: str | Path | Store | None = None,
    seed: int = 0,
    jobs: int = 1,
    backend: Backend = "joblib",
    command: str = "",
    quiet: bool = False,
    n_resamples: int = 9999,
) -> SuiteResult:
    """Replicate every experiment into one store (:func:`replicate`: each finished replication
    is committed at once, and a second call runs only the missing ones, so a killed suite
    resumes where it stopped), then write the leaderboard into ``out``.

    Parameters
    ----------
    experiments
        One per data set (:func:`suite_experiments` checks them and their files).
    replications
        Replications per data set (the leaderboard reads replications ``0 .. n - 1``).
    store
        The store (default ``<out>/results.sqlite``).
    seed, jobs, backend
        As :func:`replicate`'s.

    """
    out = Path(out)
    store = store if isinstance(store, Store) else Store(store or out / "results.sqlite")
    started = time.perf_counter()
    # one Ray session for every data set (joblib starts its workers per batch anyway)
    with ray_session() if backend == "ray" else nullcontext():
        frames = {
            e.name: replicate(
                e, replications, seed=seed, jobs=jobs, backend=backend, store=store, quiet=quiet
            )
            for e in experiments
        }
    seconds = time.perf_counter() - started
    board = leaderboard(
        frames, {e.name: e for e in experiments}, n_resamples=n_resamples, seed=seed
    )
    files = write_leaderboard(
        board,
        {e.name: e for e in experiments},
        out,
        command=command,
        notes=[
            f"{replications} replications per data set; base seed {seed}.",
            *([f"Caution: {FEW_REPLICATIONS_NOTE}."] if replications < MIN_TESTABLE_N else []),
        ],
    )
    return SuiteResult(frames, board, files, seconds)


def stored_suite(store: Store) -> tuple[dict[str, pd.DataFrame], dict[str, DatasetExperiment]]:
    """Each data set's latest stored suite configuration (its experiment rebuilt from the
    stored configuration) and its tidy test metrics: a leaderboard redrawn from the store
    alone, without training and whatever code made it."""
    frames, experiments = {}, {}
    for row in store.configs().itertuples():  # oldest first: a later one replaces it
        config = json.loads(row.config)
        if "dataset" not in config or row.replications == 0:
            continue
        experiment = DatasetExperiment(
            config["dataset"],
            methods=tuple(config["objectives"]),
            references=tuple(config["references"]),
            baseline=config["baseline"],
            budget=config["budget"],
            tune_trials=config["tune_trials"],
        )
        experiments[experiment.name] = experiment
        frames[experiment.name] = store.frame(row.config_hash)
    if not frames:
        raise ValueError(f"{store.path} holds no finished replication of a suite")
    return frames, experiments


def write_suite_report(
    store: Store, out: str | Path, *, command: str = "", n_resamples: int = 9999
) -> dict[str, Path]:
    """The leaderboard of the suite stored in ``store`` (:func:`stored_suite`) into ``out``."""
    frames, experiments = stored_suite(store)
    counts = sorted({int(f["replication"].nunique()) for f in frames.values()})
    board = leaderboard(frames, experiments, n_resamples=n_resamples)
    notes = [f"Replications per data set: {', '.join(map(str, counts))}."]
    if counts[0] < MIN_TESTABLE_N:
        notes.append(f"Caution: {FEW_REPLICATIONS_NOTE}.")
    return write_leaderboard(board, experiments, out, command=command, notes=notes)
