"""``polytask suite``: data sets x methods x replications into one resumable store, then the
leaderboard."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..evaluation._statistics import FEW_REPLICATIONS_NOTE, MIN_TESTABLE_N
from ._replicate import Backend, replicate
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
