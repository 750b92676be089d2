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


# --- structured terms, learned weights and the multi-output helper -------------------------
def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _keras_value(tensor):
    return float(_numpy(tensor))


@pytest.mark.parametrize("distance", ["absolute", "squared"])
def test_keras_consistency_equals_the_pytorch_term(distance):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 3)).astype(np.float32)
    b = rng.normal(size=(8, 3)).astype(np.float32)
    tasks = [pt.Task("a", kind="multiclass", size=3), pt.Task("b", kind="multiclass", size=3)]
    torch_term = pt.Consistency([("a", "b")], weight=0.7, distance=distance)
    torch_term.bind(tasks)
    expected = float(torch_term({"a": torch.tensor(a), "b": torch.tensor(b)}))
    logits = ptk.consistency([("a", "b")], weight=0.7, distance=distance, from_logits=True)
    assert _keras_value(logits({"a": a, "b": b})) == pytest.approx(expected, rel=1e-5)
    # Keras outputs usually end in their activation: the same value on probabilities
    soft = lambda v: np.exp(v) / np.exp(v).sum(1, keepdims=True)  # noqa: E731
    probs = ptk.consistency([("a", "b")], weight=0.7, distance=distance)
    assert _keras_value(probs({"a": soft(a), "b": soft(b)})) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("penalty", ["kl", "absolute"])
def test_keras_hierarchical_equals_the_pytorch_term(penalty):
    rng = np.random.default_rng(1)
    fine = rng.normal(size=(8, 5)).astype(np.float32)
    coarse = rng.normal(size=(8, 1)).astype(np.float32)  # a binary coarse output
    mapping = [0, 0, 1, 1, 1]
    tasks = [pt.Task("fine", kind="multiclass", size=5), pt.Task("coarse", kind="binary")]
    torch_term = pt.Hierarchical("fine", "coarse", mapping, weight=2.0, penalty=penalty)
    torch_term.bind(tasks)
    expected = float(torch_term({"fine": torch.tensor(fine), "coarse": torch.tensor(coarse)}))
    term = ptk.hierarchical("fine", "coarse", mapping, 2.0, penalty, from_logits=True)
    assert _keras_value(term({"fine": fine, "coarse": coarse})) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="coarse classes"):
        ptk.hierarchical("fine", "coarse", [0, 0, 2])
    with pytest.raises(ValueError, match="penalty"):
        ptk.hierarchical("fine", "coarse", mapping, penalty="js")


def test_keras_uncertainty_equals_the_pytorch_objective():
    losses = np.array([2.0, 4.0, 0.5], np.float32)
    layer = ptk.Uncertainty(3)
    layer.log_var.assign(np.array([0.3, -0.2, 1.0], np.float32))
    objective = pt.Uncertainty()
    objective.bind(["a", "b", "c"])
    with torch.no_grad():
        objective.log_variances.copy_(torch.tensor([0.3, -0.2, 1.0]))
    expected = float(objective.combine(torch.tensor(losses)).detach())
    assert _keras_value(layer.combine(keras.ops.convert_to_tensor(losses))) == pytest.approx(
        expected, rel=1e-6
    )


def _two_output_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = {
        "fine": keras.layers.Dense(4, activation="softmax", name="fine")(hidden),
        "coarse": keras.layers.Dense(2, activation="softmax", name="coarse")(hidden),
    }
    return keras.Model(inputs, outputs)


def test_compile_multitask_trains_learned_weights_and_terms():
    """A dict-output functional model trains through the helper: the uncertainty variables
    move, the loss falls, and the compiled loss equals combiner + term on the same arrays."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    fine = (x[:, 0] > 0).astype(int) * 2 + (x[:, 1] > 0).astype(int)
    coarse = fine // 2
    y = {"fine": fine, "coarse": coarse}
    uncertainty = ptk.Uncertainty(2)
    term = ptk.hierarchical("fine", "coarse", [0, 0, 1, 1], weight=0.5)
    losses = {
        "fine": "sparse_categorical_crossentropy",
        "coarse": "sparse_categorical_crossentropy",
    }
    net = ptk.compile_multitask(
        _two_output_model(), losses, uncertainty, [term], optimizer=keras.optimizers.Adam(1e-2)
    )
    history = net.fit(x, y, batch_size=64, epochs=10, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    assert np.abs(keras.ops.convert_to_numpy(uncertainty.log_var)).max() > 1e-3
    assert any(v is uncertainty.log_var for v in net.trainable_variables)
    out = net(x[:32])
    per_task = [
        float(np.mean(_numpy(keras.losses.sparse_categorical_crossentropy(y[n][:32], out[n]))))
        for n in ("fine", "coarse")
    ]
    s = keras.ops.convert_to_numpy(uncertainty.log_var)
    expected = sum(0.5 * np.exp(-s[i]) * per_task[i] + 0.5 * s[i] for i in range(2))
    expected += _keras_value(term(out))
    got = _keras_value(net.compute_loss(x[:32], {k: v[:32] for k, v in y.items()}, out))
    assert got == pytest.approx(expected, rel=1e-4)


def test_compile_multitask_rejects_bad_configurations():
    model = _two_output_model()
    with pytest.raises(ValueError, match=r"none for \['coarse'\]"):
        ptk.compile_multitask(model, {"fine": "mse"})
    with pytest.raises(ValueError, match="unknown outputs"):
        ptk.compile_multitask(
            model, {"fine": "mse", "coarse": "mse"}, terms=[ptk.consistency([("fine", "x")])]
        )
    with pytest.raises(ValueError, match="combiner"):
        ptk.compile_multitask(model, {"fine": "mse", "coarse": "mse"}, combiner="median")
    with pytest.raises(ValueError, match="3 weights for 2 outputs"):
        ptk.compile_multitask(model, {"fine": "mse", "coarse": "mse"}, ptk.Weighted([1, 1, 1]))
