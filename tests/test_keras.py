"""polytask.keras on Keras's torch backend, against the PyTorch combiners."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import polytask as pt

keras = pytest.importorskip("keras", reason="the 'keras' extra is not installed")
ptk = pytest.importorskip("polytask.keras")

pairs = st.integers(2, 6).flatmap(
    lambda t: st.tuples(
        arrays(np.float32, (8, t), elements=st.floats(-3, 3, width=32)),
        arrays(np.float32, (8, t), elements=st.floats(-3, 3, width=32)),
    )
)


def torch_value(objective, y_true, y_pred):
    objective.bind([f"t{i}" for i in range(y_true.shape[1])])
    mse = ((torch.tensor(y_pred) - torch.tensor(y_true)) ** 2).mean(0)
    return float(objective.value(mse))


@settings(max_examples=30, deadline=None)
@given(pair=pairs)
def test_keras_losses_equal_the_pytorch_combiners(pair):
    y_true, y_pred = pair
    t = y_true.shape[1]
    weights = list(np.linspace(0.2, 3.0, t))
    cases = [
        (ptk.GeometricMean(), pt.GeometricMean()),
        (ptk.Weighted(weights), pt.Weighted(weights)),
        (ptk.Mean(), pt.Mean()),
    ]
    for keras_loss, torch_objective in cases:
        got = float(keras.ops.convert_to_numpy(keras_loss(y_true, y_pred)))
        expected = torch_value(torch_objective, y_true, y_pred)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-30), type(keras_loss).__name__


def test_geometric_mean_survives_a_perfect_column():
    y = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    pred = y.copy()
    pred[:, 1] += 1
    value = float(keras.ops.convert_to_numpy(ptk.GeometricMean()(y, pred)))
    assert np.isfinite(value) and value < 1e-15


def test_weighted_validates_and_round_trips_its_config():
    with pytest.raises(ValueError, match="non-negative"):
        ptk.Weighted([1.0, -2.0])
    loss = ptk.Weighted([1.0, 2.0])
    assert type(loss).from_config(loss.get_config()).weights == [1.0, 2.0]
    with pytest.raises(ValueError, match="2 weights for 3 output columns"):
        loss(np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32))


def test_model_compile_and_fit_reduce_the_geometric_loss():
    keras.utils.set_random_seed(0)
    data = pt.make_hetero(600, n_tasks=3, seed=0)
    x = data.x.numpy()
    y = np.stack([data.targets[t].numpy() for t in data.task_names], axis=1)
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(3)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=ptk.GeometricMean())
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
