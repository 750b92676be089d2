"""Concrete slump test (UCI): slump, flow and 28-day compressive strength of 103 concrete mixes
from 7 mix inputs (kg per m^3); three regression tasks on a tiny table.

The row-number column ``No`` is dropped (an id, not a property of the mix); rows are split
60/20/20 at random from the seed (62 / 21 / 20 rows), so the budget is small: batch 16.
"""

from __future__ import annotations

from ..tasks import Task
from ._files import RandomSplitTable
from ._spec import DatasetSpec, shared_bottom

FILE = "slump_test.data"
ROWS = 103
ID = "No"
INPUTS = ("Cement", "Slag", "Fly ash", "Water", "SP", "Coarse Aggr.", "Fine Aggr.")
TARGETS = {
    "slump": "SLUMP(cm)",
    "flow": "FLOW(cm)",
    "strength": "Compressive Strength (28-day)(Mpa)",
}
"""Task name -> its column."""


TABLE = RandomSplitTable(FILE, (ID, *INPUTS, *TARGETS.values()), INPUTS, TARGETS, ROWS)

SPEC = DatasetSpec(
    name="concrete",
    folder="concrete_slump",
    description="slump, flow and 28-day strength of 103 concrete mixes (UCI Concrete Slump Test)",
    tasks=tuple(Task(name, "regression", metrics=("mse", "mae")) for name in TARGETS),
    check=TABLE.check,
    load=TABLE.load,
    model=shared_bottom(hidden=(32,), tower_hidden=(16,)),
    metric="mse",
    lr=3e-3,
    batch_size=16,
    max_epochs=150,
    patience=20,
)
