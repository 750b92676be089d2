"""Energy efficiency (UCI ENB2012): the heating and cooling loads of 768 simulated buildings
from 8 design inputs; two strongly correlated regression tasks.

All 8 inputs X1..X8 are kept (orientation X6 and glazing distribution X8 are small integer codes,
standardised like the rest); rows are split 60/20/20 at random from the seed.
"""

from __future__ import annotations

from ..tasks import Task
from ._files import RandomSplitTable
from ._spec import DatasetSpec, shared_bottom

FILE = "ENB2012_data.csv"
ROWS = 768
INPUTS = ("X1", "X2", "X3", "X4", "X5", "X6", "X7", "X8")
TARGETS = {"heating": "Y1", "cooling": "Y2"}
"""Task name -> its column."""


TABLE = RandomSplitTable(FILE, (*INPUTS, *TARGETS.values()), INPUTS, TARGETS, ROWS)

SPEC = DatasetSpec(
    name="energy",
    folder="energy_efficiency",
    description="heating and cooling load of 768 simulated buildings (UCI ENB2012)",
    tasks=tuple(Task(name, "regression", metrics=("mse", "mae")) for name in TARGETS),
    check=TABLE.check,
    load=TABLE.load,
    model=shared_bottom(hidden=(64,), tower_hidden=(16,)),
    metric="mse",
    lr=3e-3,
    batch_size=64,
    max_epochs=80,
    patience=10,
)
