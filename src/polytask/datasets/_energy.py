"""Energy efficiency (UCI ENB2012): the heating and cooling loads of 768 simulated buildings
from 8 design inputs; two strongly correlated regression tasks.

All 8 inputs X1..X8 are kept (orientation X6 and glazing distribution X8 are small integer codes,
standardised like the rest); rows are split 60/20/20 at random from the seed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..tasks import Task
from ._files import read_table, regression_splits, split_rows
from ._spec import DatasetSpec, Splits, shared_bottom

FILE = "ENB2012_data.csv"
ROWS = 768
INPUTS = ("X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8")
TARGETS = {"heating": "Y1", "cooling": "Y2"}
"""Task name -> its column."""


def _read(folder: Path) -> pd.DataFrame:
    return read_table(Path(folder) / FILE, [*INPUTS, *TARGETS.values()], rows=ROWS)


def check(folder: Path) -> None:
    """Validate ``ENB2012_data.csv`` (header, 768 rows of 10 numbers)."""
    _read(folder)


def load(folder: Path, seed: int) -> Splits:
    """The 60/20/20 random split of ``seed``, standardised with the training rows."""
    frame = _read(folder)
    targets = {task: frame[column].to_numpy() for task, column in TARGETS.items()}
    return regression_splits(frame[list(INPUTS)].to_numpy(), targets, split_rows(ROWS, seed))


SPEC = DatasetSpec(
    name="energy",
    folder="energy_efficiency",
    description="heating and cooling load of 768 simulated buildings (UCI ENB2012)",
    tasks=tuple(Task(name, "regression", metrics=("mse", "mae")) for name in TARGETS),
    check=check,
    load=load,
    model=shared_bottom(hidden=(64,), tower_hidden=(16,)),
    metric="mse",
    lr=3e-3,
    batch_size=64,
    max_epochs=80,
    patience=10,
)
