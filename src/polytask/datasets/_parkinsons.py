"""Parkinsons telemonitoring (UCI): motor and total UPDRS scores of 42 early-stage patients
from 5,875 home voice recordings; two regression tasks.

Inputs: the 16 voice measures, plus ``age`` and ``sex``, which a clinic knows of any new
patient. Left out: ``subject#`` (an id) and ``test_time`` (days since recruitment): the UPDRS
targets are interpolated linearly in time between visits, so within a subject test_time
(with age and sex, which identify the training subjects) traces that subject's score and invites
memorising the training patients' trajectories, while it says little about a new patient's
score.

The split is by subject, never by row (a subject's recordings are near duplicates): the
subjects are drawn 60/20/20 from the seed (25 / 8 / 9 subjects, about 3,500 / 1,100 / 1,250
recordings), and every recording of a subject lands in the subject's part. Predicting a new
subject's score from voice is hard: early stopping usually keeps one of the first few epochs,
and the test error varies a lot with which subjects are drawn.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..tasks import Task
from ._files import read_table, regression_splits, split_groups
from ._spec import DatasetSpec, Splits, shared_bottom

FILE = "parkinsons_updrs.data"
ROWS = 5875
SUBJECT = "subject#"
VOICE = (
    "Jitter(%)",
    "Jitter(Abs)",
    "Jitter:RAP",
    "Jitter:PPQ5",
    "Jitter:DDP",
    "Shimmer",
    "Shimmer(dB)",
    "Shimmer:APQ3",
    "Shimmer:APQ5",
    "Shimmer:APQ11",
    "Shimmer:DDA",
    "NHR",
    "HNR",
    "RPDE",
    "DFA",
    "PPE",
)
INPUTS = ("age", "sex", *VOICE)
TARGETS = {"motor_UPDRS": "motor_UPDRS", "total_UPDRS": "total_UPDRS"}
"""Task name -> its column."""
COLUMNS = (SUBJECT, "age", "sex", "test_time", *TARGETS.values(), *VOICE)


def _read(folder: Path) -> pd.DataFrame:
    return read_table(Path(folder) / FILE, COLUMNS, rows=ROWS)


def check(folder: Path) -> None:
    """Validate ``parkinsons_updrs.data`` (header, 5,875 rows of 22 numbers)."""
    _read(folder)


def load(folder: Path, seed: int) -> Splits:
    """The by-subject 60/20/20 split of ``seed``, standardised with the training rows."""
    frame = _read(folder)
    parts = split_groups(frame[SUBJECT].to_numpy(), seed)
    targets = {task: frame[column].to_numpy() for task, column in TARGETS.items()}
    return regression_splits(frame[list(INPUTS)].to_numpy(), targets, parts)


SPEC = DatasetSpec(
    name="parkinsons",
    folder="parkinsons_telemonitoring",
    description="motor and total UPDRS of 42 Parkinson's patients from voice recordings (UCI)",
    tasks=tuple(Task(name, "regression", metrics=("mse", "mae")) for name in TARGETS),
    check=check,
    load=load,
    model=shared_bottom(hidden=(64,), tower_hidden=(16,)),
    metric="mse",
    lr=1e-3,
    batch_size=128,
    max_epochs=60,
    patience=10,
)
