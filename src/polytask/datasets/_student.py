"""Student performance (UCI): the grades G1, G2 and G3 (0-20) of Portuguese secondary-school
students in mathematics (395 rows) and Portuguese (649 rows); three regression tasks.

Inputs: the 30 other attributes (the 17 categorical ones one-hot encoded by an encoder fitted on
the training rows, unknown categories ignored; the 13 numeric ones standardised with the
training rows) and a 0/1 input ``portuguese`` saying which course file the row comes from. No
grade is an input.

About 382 students appear in both files (the data set's own merge matches 13 attributes:
:data:`STUDENT_KEY`). A student's two rows share all 30 attributes but one course's grades, and
grades in the two courses are strongly correlated, so a random split by row would put one
course of a student in training and the other in evaluation. The split is therefore by student:
rows with the same 13 key attributes (in either file) form one group, and the groups are drawn
60/20/20 from the seed. A group can merge two different students who share all 13 attributes
(a few rows); keeping them together costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import OneHotEncoder

from ..tasks import Task
from ._files import read_table, regression_splits, split_groups
from ._spec import DatasetSpec, Splits, shared_bottom

FILES = {"student-mat.csv": 395, "student-por.csv": 649}
"""Course file -> its number of data rows."""
CATEGORICAL = (
    "school",
    "sex",
    "address",
    "famsize",
    "Pstatus",
    "Mjob",
    "Fjob",
    "reason",
    "guardian",
    "schoolsup",
    "famsup",
    "paid",
    "activities",
    "nursery",
    "higher",
    "internet",
    "romantic",
)
NUMERIC = (
    "age",
    "Medu",
    "Fedu",
    "traveltime",
    "studytime",
    "failures",
    "famrel",
    "freetime",
    "goout",
    "Dalc",
    "Walc",
    "health",
    "absences",
)
TARGETS = {"G1": "G1", "G2": "G2", "G3": "G3"}
"""Task name -> its column."""
COLUMNS = (
    "school", "sex", "age", "address", "famsize", "Pstatus", "Medu", "Fedu", "Mjob", "Fjob",
    "reason", "guardian", "traveltime", "studytime", "failures", "schoolsup", "famsup", "paid",
    "activities", "nursery", "higher", "internet", "romantic", "famrel", "freetime", "goout",
    "Dalc", "Walc", "health", "absences", "G1", "G2", "G3",
)  # fmt: skip
STUDENT_KEY = (
    "school",
    "sex",
    "age",
    "address",
    "famsize",
    "Pstatus",
    "Medu",
    "Fedu",
    "Mjob",
    "Fjob",
    "reason",
    "nursery",
    "internet",
)
"""The attributes that identify a student across the two files (student-merge.R)."""


def _read(folder: Path) -> pd.DataFrame:
    frames = []
    for name, rows in FILES.items():
        frame = read_table(
            Path(folder) / name, COLUMNS, rows=rows, sep=";", numeric=[*NUMERIC, *TARGETS]
        )
        frame["portuguese"] = float(name == "student-por.csv")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def check(folder: Path) -> None:
    """Validate ``student-mat.csv`` and ``student-por.csv`` (33 columns; 395 and 649 rows)."""
    _read(folder)


def student_groups(frame: pd.DataFrame) -> np.ndarray:
    """One label per row, the same for the rows of one student (in either course file).

    Examples
    --------
    >>> row = {name: "x" for name in STUDENT_KEY}
    >>> frame = pd.DataFrame([row, {**row, "age": 16}, row])
    >>> labels = student_groups(frame)
    >>> bool(labels[0] == labels[2]), bool(labels[0] == labels[1])
    (True, False)
    """
    return frame.groupby(list(STUDENT_KEY), sort=True).ngroup().to_numpy()


def load(folder: Path, seed: int) -> Splits:
    """The by-student 60/20/20 split of ``seed``; encoding and scaling fitted on the training
    rows."""
    frame = _read(folder)
    parts = split_groups(student_groups(frame), seed)
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)
    encoder.fit(frame.loc[parts[0], list(CATEGORICAL)])
    onehot = encoder.transform(frame[list(CATEGORICAL)])
    x = np.hstack([frame[list(NUMERIC)].to_numpy(), onehot, frame[["portuguese"]].to_numpy()])
    scale = np.zeros(x.shape[1], dtype=bool)
    scale[: len(NUMERIC)] = True  # one-hot and course columns stay 0/1
    targets = {task: frame[column].to_numpy() for task, column in TARGETS.items()}
    return regression_splits(x, targets, parts, scale=scale)


SPEC = DatasetSpec(
    name="student",
    folder="student_performance",
    description="grades G1, G2, G3 of 1,044 Portuguese students in maths and Portuguese (UCI)",
    tasks=tuple(Task(name, "regression", metrics=("mse", "mae")) for name in TARGETS),
    check=check,
    load=load,
    model=shared_bottom(hidden=(64,), tower_hidden=(16,)),
    metric="mse",
    lr=1e-3,
    batch_size=64,
    max_epochs=60,
    patience=10,
)
