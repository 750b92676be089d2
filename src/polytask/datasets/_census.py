"""The Adult census files (UCI), read and validated, and the census data set of the MMoE paper's
setup on its small UCI stand-in: income > 50K and never married, marital status removed from the
inputs."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import MultiTargetData
from ..tasks import Task
from ._spec import DataFormatError, DatasetSpec, Splits, shared_bottom

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "Y",
]

# --- the Adult files ---------------------------------------------------------------------------
INTEGER_COLUMNS = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss")
INTEGER_COLUMNS += ("hours-per-week",)
CATEGORICAL_INPUTS = (
    "workclass",
    "education",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native-country",
)
"""The categorical inputs: every categorical column but marital status (task 2) and Y."""
INCOME_LABELS = ("<=50K", ">50K")
EXPECTED_ROWS = {"adult.data": 32561, "adult.test": 16281}
"""Data rows of each file (``SOURCE.md`` of ``../shared/data/adult``)."""


class CensusFormatError(DataFormatError):
    """A census file that does not have the expected layout; the message names the file,
    the line and the column."""


def read_census(path: str | Path, expected_rows: int | None = None) -> pd.DataFrame:
    """Read and validate one ``adult.data`` / ``adult.test`` file.

    The header must name every column of :data:`ADULT_COLUMNS`; every row must have as many
    fields as the header, integers in the numeric columns, a label ``<=50K`` or ``>50K``
    (with or without the test file's final period) and no empty field; ``?`` is a missing
    categorical value (NaN). Blank lines are skipped.

    Parameters
    ----------
    path
        The file.
    expected_rows
        Data rows the file must hold (:data:`EXPECTED_ROWS`); ``None`` checks nothing.

    Raises
    ------
    CensusFormatError
        Naming the file, the line (1 is the header) and the column of the first problem.
    FileNotFoundError
        When ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such census file")
    stat = path.stat()
    return _read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, expected_rows).copy()


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime: int, size: int, expected_rows: int | None) -> pd.DataFrame:
    values: dict[str, list[Any]] = {c: [] for c in ADULT_COLUMNS}
    with open(path, newline="") as file:
        reader = csv.reader(file, skipinitialspace=True)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise CensusFormatError(f"{path}, line 1: empty file, expected a header line")
        missing = [c for c in ADULT_COLUMNS if c not in header]
        if missing:
            raise CensusFormatError(
                f"{path}, line 1 (header): columns {missing} are missing; the header has {header}"
            )
        where = {c: header.index(c) for c in ADULT_COLUMNS}
        for fields in reader:
            line = reader.line_num
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) != len(header):
                raise CensusFormatError(
                    f"{path}, line {line}: {len(fields)} fields, the header has {len(header)}"
                )
            for column, index in where.items():
                value = fields[index].strip()
                if not value:
                    raise CensusFormatError(f"{path}, line {line}, column {column!r}: empty value")
                if column in INTEGER_COLUMNS:
                    try:
                        values[column].append(int(value))
                    except ValueError:
                        raise CensusFormatError(
                            f"{path}, line {line}, column {column!r}: {value!r} is not an integer"
                        ) from None
                elif column == "Y":
                    label = value.rstrip(".")
                    if label not in INCOME_LABELS:
                        raise CensusFormatError(
                            f"{path}, line {line}, column 'Y': {value!r} is not one of "
                            f"{list(INCOME_LABELS)}"
                        )
                    values[column].append(label)
                else:
                    values[column].append(None if value == "?" else value)
    frame = pd.DataFrame(values)
    if expected_rows is not None and len(frame) != expected_rows:
        raise CensusFormatError(
            f"{path}: {len(frame)} data rows, expected {expected_rows} (a truncated or "
            "altered copy?)"
        )
    return frame


def census_targets(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Task 1: income > 50K; task 2: marital status is Never-married (both 0/1 float)."""
    return {
        "income": (frame["Y"] == ">50K").to_numpy(np.float32),
        "never_married": (frame["marital-status"] == "Never-married").to_numpy(np.float32),
    }


def census_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """The input columns: marital status and the label removed; capital gain and loss on a
    log scale (heavy-tailed); a missing category is its own level."""
    inputs = frame[list(INTEGER_COLUMNS) + list(CATEGORICAL_INPUTS)].copy()
    for column in ("capital-gain", "capital-loss"):
        inputs[column] = np.log1p(inputs[column].astype(float))
    inputs[list(CATEGORICAL_INPUTS)] = inputs[list(CATEGORICAL_INPUTS)].fillna("missing")
    return inputs


def census_frames(
    folder: str | Path, seed: int, stop_fraction: float = 0.2, n_train: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The train, stop and test rows: ``adult.data`` split at random from ``seed`` into train
    and stop rows (``stop_fraction``; the first ``n_train`` train rows when given),
    ``adult.test`` the test set. Both files are validated (:func:`read_census`)."""
    folder = Path(folder)
    pool = read_census(folder / "adult.data", EXPECTED_ROWS["adult.data"])
    test = read_census(folder / "adult.test", EXPECTED_ROWS["adult.test"])
    order = np.random.default_rng(seed).permutation(len(pool))
    n_stop = round(stop_fraction * len(pool))
    train_rows = order[n_stop:] if n_train is None else order[n_stop:][:n_train]
    return pool.iloc[train_rows], pool.iloc[order[:n_stop]], test


def census_encode(
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> tuple[tuple[MultiTargetData, MultiTargetData, MultiTargetData], Any]:
    """The three sets encoded with standardised numerics and one-hot categoricals fitted on the
    training rows only; returns them and the fitted encoder."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encoder = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(INTEGER_COLUMNS)),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL_INPUTS)),
        ],
        sparse_threshold=0.0,
    )
    encoder.fit(census_inputs(frames[0]))

    def part(frame: pd.DataFrame) -> MultiTargetData:
        x = encoder.transform(census_inputs(frame)).astype(np.float32)
        return MultiTargetData(x, census_targets(frame))

    train, stop, test = (part(f) for f in frames)
    return (train, stop, test), encoder


def check_census(folder: Path) -> None:
    """Read and validate both files (:func:`read_census`)."""
    for name, rows in EXPECTED_ROWS.items():
        read_census(Path(folder) / name, rows)


def load_census(folder: Path, seed: int) -> Splits:
    """The replication's splits: 80/20 train/stop rows of ``adult.data``, ``adult.test``."""
    (train, stop, test), _ = census_encode(census_frames(folder, seed))
    return Splits(train, stop, test)


CENSUS_TASKS = (
    Task("income", kind="binary", metrics=("auc", "accuracy")),
    Task("never_married", kind="binary", metrics=("auc", "accuracy")),
)

SPEC = DatasetSpec(
    name="census",
    folder="adult",
    description="Adult census (UCI): income > 50K and never married, marital status removed "
    "from the inputs (the MMoE paper's census setup on its small stand-in); adult.test is the "
    "test set",
    tasks=CENSUS_TASKS,
    check=check_census,
    load=load_census,
    # the shared-bottom of the architecture comparison: 128 units (8 experts x 16), towers of 8
    model=shared_bottom(hidden=(128,), tower_hidden=(8,)),
    metric="auc",
    lr=1e-3,
    batch_size=256,
    max_epochs=20,
    patience=3,
)
