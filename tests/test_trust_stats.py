"""Issue #12: partial multilabel targets, statistics that say what they measure, readable figures.

Property tests check the numeric parts against independent computations (numpy, scipy.stats).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import polytask as pt

# -- multilabel losses with missing labels ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, (6, 3), elements=st.floats(-6, 6)),
    hnp.arrays(np.bool_, (6, 3)),
    hnp.arrays(np.bool_, (6, 3)),
)
def test_multilabel_loss_is_the_mean_bce_over_known_labels(logits, labels, holes):
    """Against numpy: -mean(y log s(z) + (1-y) log s(-z)) over the known labels only."""
    assume(not holes.all())
    target = np.where(holes, np.nan, labels.astype(float))
    task = pt.Task("m", kind="multilabel", size=3, allow_missing=True)
    prepared, known = task.prepare(torch.from_numpy(target), "train")
    assert known.numpy().tolist() == (~holes.all(axis=1)).tolist()
    z, y = logits[~holes], labels[~holes]
    expected = -np.mean(y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z))
    got = task.compute_loss(torch.from_numpy(logits), prepared.double(), known)
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_training_with_partial_multilabel_targets_masks_each_label(rng):
    """The trainer's stop loss of a multilabel task is the BCE over the known labels."""
    n = 48
    x = rng.normal(size=(n, 3)).astype(np.float32)
    labels = (x[:, :2] > 0).astype(np.float32)
    y = labels.copy()
    y[::2, 1] = np.nan  # half the rows miss label 1
    y[5] = np.nan  # and one row misses both
    data = pt.MultiTargetData(x, {"m": y})
    task = pt.Task("m", kind="multilabel", size=2, allow_missing=True)
    model = pt.MultiTaskModel(nn.Linear(3, 4), {"m": nn.Linear(4, 2)})
    trainer = pt.Trainer("sum", max_epochs=2, patience=None, quiet=True, device="cpu")
    history = trainer.fit(model, [task], data, data)
    with torch.no_grad():
        logits = model(torch.from_numpy(x), task="m")
    known = torch.from_numpy(~np.isnan(y))
    expected = F.binary_cross_entropy_with_logits(logits[known], torch.from_numpy(labels)[known])
    assert history.records[-1]["stop_loss/m"] == pytest.approx(float(expected), rel=1e-4)
