import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest
from hypothesis import settings
from torch import nn

import polytask as pt

# CI runs the property tests on a fixed set of examples; locally they explore new ones each run
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def hetero_splits():
    """Small hetero data split 1:9:10 (200 / 1800 / 2000 rows)."""
    return pt.split(pt.make_hetero(4000, n_tasks=3, seed=1))


def small_model(names=("task0", "task1", "task2"), seed=0, width=16, columns=False):
    trunk = pt.mlp(1, width, 2, seed=seed)
    if columns:
        layer = nn.Linear(width, len(names))
        pt.models.init_linear(layer, "glorot", None)
        return pt.MultiTaskModel(trunk, pt.ColumnHeads(layer, {n: 1 for n in names}))
    heads = {}
    for i, name in enumerate(names):
        head = nn.Linear(width, 1)
        pt.models.init_linear(head, "glorot", __import__("torch").Generator().manual_seed(seed + i))
        heads[name] = head
    return pt.MultiTaskModel(trunk, heads)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data: skipped with a reason when absent, but never on CI."""
    path = SHARED_DATA / name
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing, and CI always has the shared data")
        pytest.skip(f"shared data not found at {path}")
    return path


def stored_replications(store) -> int:
    """Replications committed to an SQLite store so far (0 while it is being created), read
    while another process writes to it."""
    import sqlite3

    if not os.path.exists(store):
        return 0
    try:
        with sqlite3.connect(store, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM replications").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
