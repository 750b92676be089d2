"""Adult education: the UCI census rows with education as a fine task (16 levels,
``education-num - 1``) and a coarse one (no degree / high school / college / graduate, by
:data:`EDUCATION_TO_LEVEL`), both education columns removed from the inputs; the data set of
the hierarchical (fine/coarse) penalty.

Train and stop rows are drawn from ``adult.data`` and test rows from ``adult.test``, afresh per
replication; numerics are standardised (capital gain and loss on a log scale) and categoricals
one-hot encoded, both fitted on the training rows only. The files are validated as the
``census`` data set's are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import MultiTargetData
from ..tasks import Task
from ._census import EXPECTED_ROWS, check_census, read_census
from ._spec import DatasetSpec, Splits, shared_bottom

NUMERIC = ["age", "fnlwgt", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = [
    "workclass",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native-country",
    "Y",
]
"""The inputs: every column but the two education ones (the targets)."""
EDUCATION_LEVELS = ("no degree", "high school", "college", "graduate")
EDUCATION_TO_LEVEL = {k: 0 for k in range(8)} | {8: 1, 9: 2, 10: 2, 11: 2, 12: 2}
EDUCATION_TO_LEVEL |= {13: 3, 14: 3, 15: 3}
"""Fine class (``education-num - 1``) -> its index in :data:`EDUCATION_LEVELS`."""
TASKS = (
    Task("education", kind="multiclass", size=16, metrics=("macro_f1", "accuracy")),
    Task("level", kind="multiclass", size=4, metrics=("macro_f1", "accuracy")),
)


def education_splits(
    folder: Path, seed: int, n_train: int = 4000, n_stop: int = 4000, n_test: int = 10000
) -> Splits:
    """``n_train`` train and ``n_stop`` stop rows drawn from ``adult.data``, ``n_test`` test rows
    from ``adult.test``, all from ``seed``; scaling and one-hot codes fitted on the train rows.

    Examples
    --------
    >>> EDUCATION_LEVELS[EDUCATION_TO_LEVEL[12]]  # education-num 13: bachelors
    'college'
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    folder = Path(folder)
    pool = read_census(folder / "adult.data", EXPECTED_ROWS["adult.data"])
    test = read_census(folder / "adult.test", EXPECTED_ROWS["adult.test"])
    if n_train + n_stop > len(pool):
        raise ValueError(f"n_train + n_stop exceeds the {len(pool)} rows of adult.data")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    frames = [
        pool.iloc[order[:n_train]],
        pool.iloc[order[n_train : n_train + n_stop]],
        test.iloc[rng.permutation(len(test))[:n_test]],
    ]
    capital = ["capital-gain", "capital-loss"]  # heavy-tailed: on a log scale
    frames = [f.assign(**{c: np.log1p(f[c].astype(float)) for c in capital}) for f in frames]
    frames = [f.fillna({c: "missing" for c in CATEGORICAL}) for f in frames]
    encoder = ColumnTransformer(
        [
            ("numeric", StandardScaler(), NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ],
        sparse_threshold=0.0,
    )
    encoder.fit(frames[0])

    def part(frame: pd.DataFrame) -> MultiTargetData:
        x = encoder.transform(frame)
        fine = frame["education-num"].to_numpy() - 1
        coarse = np.array([EDUCATION_TO_LEVEL[int(f)] for f in fine])
        return MultiTargetData(x.astype(np.float32), {"education": fine, "level": coarse})

    train, stop, test_part = (part(f) for f in frames)
    return Splits(train, stop, test_part)


SPEC = DatasetSpec(
    name="adult-education",
    folder="adult",
    description="Adult census (UCI): education (16 levels) and its coarse level (4), the "
    "education columns removed from the inputs; adult.test is the test set",
    tasks=TASKS,
    check=check_census,
    load=education_splits,
    model=shared_bottom(hidden=(64,), tower_hidden=()),
    metric="macro_f1",
    lr=1e-3,
    batch_size=64,
    max_epochs=60,
    patience=8,
)
