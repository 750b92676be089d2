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


@pytest.mark.parametrize("targets", [(32,), (32, 1), (32, 3)])
@pytest.mark.parametrize("loss", ["GeometricMean", "Mean"])
def test_targets_that_would_broadcast_are_refused(loss, targets):
    """(32,) targets against (32, 5) predictions used to broadcast into a number."""
    y_true, y_pred = np.zeros(targets, np.float32), np.ones((32, 5), np.float32)
    with pytest.raises(ValueError, match=r"targets of shape \(32,.*\(32, 5\)"):
        getattr(ptk, loss)()(y_true, y_pred)
    one_column = getattr(ptk, loss)()(np.zeros(32, np.float32), y_pred[:, :1])
    assert float(keras.ops.convert_to_numpy(one_column)) == pytest.approx(1.0)  # still works
    flat = getattr(ptk, loss)()(np.zeros(32, np.float32), y_pred[:, 0])  # (32,) and (32,)
    assert float(keras.ops.convert_to_numpy(flat)) == pytest.approx(1.0)


def test_all_zero_weights_are_refused_in_keras_and_torch():
    with pytest.raises(ValueError, match="every weight is 0"):
        ptk.Weighted([0.0, 0.0])
    with pytest.raises(ValueError, match="every weight is 0"):
        pt.Weighted({"a": 0, "b": 0.0})
    assert ptk.Weighted([0.0, 1.0]).weights == [0.0, 1.0]  # some zero weights are fine


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


# --- saving, per-output logs, sample weights, the shared mapping check ----------------------
LOSSES = {"fine": "sparse_categorical_crossentropy", "coarse": "sparse_categorical_crossentropy"}


def _fine_coarse_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    fine = (x[:, 0] > 0).astype(int) * 2 + (x[:, 1] > 0).astype(int)
    return x, {"fine": fine, "coarse": fine // 2}


def _cross_entropy(probabilities, labels):
    """Per-row sparse cross-entropy, in numpy (independent of Keras's loss)."""
    return -np.log(probabilities[np.arange(len(labels)), labels])


@keras.saving.register_keras_serializable(package="polytask_tests")
def _rows_l1(a, b):
    return keras.ops.sum(keras.ops.abs(a - b), axis=-1)


def test_save_load_round_trip_keeps_predictions_weights_and_training(tmp_path):
    """A saved model with learned weights and both terms loads back equal: predictions, the
    uncertainty log-variances, the loss, and one more epoch of training (optimizer state)."""
    keras.utils.set_random_seed(0)
    x, y = _fine_coarse_data()
    terms = [
        ptk.hierarchical("fine", "coarse", [0, 0, 1, 1], weight=0.5),
        ptk.consistency([("coarse", "coarse2")], weight=0.1, distance=_rows_l1),
    ]
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = {
        "fine": keras.layers.Dense(4, activation="softmax", name="fine")(hidden),
        "coarse": keras.layers.Dense(2, activation="softmax", name="coarse")(hidden),
        "coarse2": keras.layers.Dense(2, activation="softmax", name="coarse2")(hidden),
    }
    losses = {**LOSSES, "coarse2": "sparse_categorical_crossentropy"}
    y = {**y, "coarse2": y["coarse"]}
    net = ptk.compile_multitask(
        keras.Model(inputs, outputs),
        losses,
        ptk.Uncertainty(3),
        terms,
        optimizer=keras.optimizers.Adam(1e-2),
    )
    net.fit(x, y, batch_size=64, epochs=3, verbose=0)
    path = tmp_path / "net.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)

    s = _numpy(net.combiner.log_var)
    assert np.abs(s).max() > 1e-3  # learned, so equality below is not zeros == zeros
    assert type(loaded.combiner) is ptk.Uncertainty
    np.testing.assert_array_equal(_numpy(loaded.combiner.log_var), s)
    assert any(v is loaded.combiner.log_var for v in loaded.trainable_variables)
    assert [type(t) for t in loaded.terms] == [ptk.Hierarchical, ptk.Consistency]
    assert [t.get_config() for t in loaded.terms] == [t.get_config() for t in terms]
    assert loaded.terms[1].distance is _rows_l1
    before, after = net.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for name in losses:
        np.testing.assert_array_equal(after[name], before[name])
    batch = {k: v[:64] for k, v in y.items()}
    assert _keras_value(loaded.compute_loss(x[:64], batch, loaded(x[:64]))) == pytest.approx(
        _keras_value(net.compute_loss(x[:64], batch, net(x[:64]))), rel=1e-6
    )
    # Both go on training on the same batches: equal only if the optimizer state came back.
    assert loaded.optimizer.iterations.numpy() == net.optimizer.iterations.numpy() == 12
    history = loaded.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    net.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert np.abs(_numpy(loaded.combiner.log_var) - s).max() > 1e-5  # it trains
    np.testing.assert_allclose(_numpy(loaded.combiner.log_var), _numpy(net.combiner.log_var))
    for mine, theirs in zip(loaded.model.weights, net.model.weights, strict=True):
        np.testing.assert_allclose(_numpy(mine), _numpy(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combiner", ["sum", "mean", "geometric", "weighted"])
def test_every_combiner_round_trips_through_a_keras_file(tmp_path, combiner):
    keras.utils.set_random_seed(0)
    x, y = _fine_coarse_data(64)
    given = ptk.Weighted([1.0, 3.0]) if combiner == "weighted" else combiner
    net = ptk.compile_multitask(_two_output_model(), LOSSES, given)
    net.fit(x, y, batch_size=64, epochs=1, verbose=0)  # builds the optimizer that is saved
    net.save(tmp_path / "net.keras")
    loaded = keras.saving.load_model(tmp_path / "net.keras")
    assert type(loaded.combiner) is type(net.combiner)
    if combiner == "weighted":
        assert loaded.combiner.weights == [1.0, 3.0]
    out = net(x)
    assert _keras_value(loaded.compute_loss(x, y, out)) == pytest.approx(
        _keras_value(net.compute_loss(x, y, out)), rel=1e-6
    )


def test_a_term_that_cannot_load_is_refused_when_saving(tmp_path):
    def closure_term(outputs):
        return keras.ops.mean(outputs["fine"])

    def unregistered(a, b):
        return keras.ops.sum(keras.ops.abs(a - b), axis=-1)

    net = ptk.compile_multitask(_two_output_model(), LOSSES, terms=[closure_term])
    with pytest.raises(TypeError, match=r"closure_term.*register_keras_serializable"):
        net.save(tmp_path / "net.keras")
    term = ptk.consistency([("fine", "coarse")], distance=unregistered)
    with pytest.raises(TypeError, match=r"unregistered.*cannot be saved"):
        term.get_config()


class _LogVarsPerBatch(keras.callbacks.Callback):
    """Records the log-variances before each step (what compute_loss sees) and at epoch end,
    and each batch's per-output cross-entropy computed in numpy before its step."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.steps, self.ends = [], []

    def on_train_batch_begin(self, batch, logs=None):
        rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        out = self.model.model(self.x[rows])
        losses = {n: _cross_entropy(_numpy(out[n]), self.y[n][rows]).mean() for n in out}
        self.steps.append((_numpy(self.model.combiner.log_var).copy(), losses))

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(_numpy(self.model.combiner.log_var).copy())


def test_history_logs_each_output_loss_and_learned_weight():
    """fit records <output>_loss and <output>_weight (0.5 exp(-s_t) for Uncertainty) per epoch,
    for training and validation, equal to the same quantities computed outside Keras."""
    keras.utils.set_random_seed(0)
    x, y = _fine_coarse_data(256)
    xv, yv = _fine_coarse_data(96, seed=1)
    net = ptk.compile_multitask(
        _two_output_model(), LOSSES, ptk.Uncertainty(2), optimizer=keras.optimizers.Adam(5e-2)
    )
    record = _LogVarsPerBatch(x, y, 64)
    epochs = 3
    history = net.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        shuffle=False,
        validation_data=(xv, yv),
        validation_batch_size=96,
        callbacks=[record],
        verbose=0,
    ).history
    expected_keys = {
        f"{p}{n}_{k}" for p in ("", "val_") for n in LOSSES for k in ("loss", "weight")
    }
    assert expected_keys | {"loss", "val_loss"} == set(history)
    assert len(record.steps) == 4 * epochs
    for epoch in range(epochs):
        steps = record.steps[4 * epoch : 4 * (epoch + 1)]
        for i, name in enumerate(("fine", "coarse")):
            weight = np.mean([0.5 * np.exp(-s[i]) for s, _ in steps])
            loss = np.mean([losses[name] for _, losses in steps])
            assert history[f"{name}_weight"][epoch] == pytest.approx(weight, rel=1e-5)
            assert history[f"{name}_loss"][epoch] == pytest.approx(loss, rel=1e-4)
            # validation runs after the epoch's last step: the weights at epoch end
            end = 0.5 * np.exp(-record.ends[epoch][i])
            assert history[f"val_{name}_weight"][epoch] == pytest.approx(end, rel=1e-5)
    # the weights moved, so the check above is not comparing constants
    assert abs(history["fine_weight"][-1] - history["fine_weight"][0]) > 1e-3
    out = net.predict(xv, verbose=0)
    for name in ("fine", "coarse"):
        expected = _cross_entropy(out[name], yv[name]).mean()
        assert history[f"val_{name}_loss"][-1] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("combiner", ["sum", "mean", "geometric", "weighted"])
def test_logged_weight_is_the_derivative_of_the_combined_loss(combiner):
    """<output>_weight of the fixed combiners: 1 (sum), 1/T (mean), w_t (Weighted) and
    G / (T L_t) (geometric), from the losses computed in numpy."""
    keras.utils.set_random_seed(0)
    x, y = _fine_coarse_data(128)
    given = ptk.Weighted([0.5, 2.0]) if combiner == "weighted" else combiner
    net = ptk.compile_multitask(
        _two_output_model(), LOSSES, given, optimizer=keras.optimizers.SGD(0.0)
    )
    history = net.fit(x, y, batch_size=128, epochs=1, verbose=0).history
    out = net.predict(x, verbose=0)
    losses = np.array([_cross_entropy(out[n], y[n]).mean() for n in LOSSES])
    expected = {
        "sum": np.ones(2),
        "mean": np.full(2, 0.5),
        "weighted": np.array([0.5, 2.0]),
        "geometric": np.exp(np.log(losses).mean()) / (2 * losses),
    }[combiner]
    got = [history[f"{n}_weight"][0] for n in LOSSES]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose([history[f"{n}_loss"][0] for n in LOSSES], losses, rtol=1e-5)


def test_sample_weight_weights_each_output_loss_as_keras_does():
    """One array weights every output, a dict the outputs it names: loss_t = sum_i(w_i l_i)/n,
    checked by hand, through evaluate, and against Keras's own compile(loss=dict)."""
    keras.utils.set_random_seed(0)
    x, y = _fine_coarse_data(32)
    w = np.linspace(0.0, 3.0, 32)  # mean 1.5: dividing by sum(w) instead of n would show
    net = ptk.compile_multitask(_two_output_model(), LOSSES, ptk.Weighted([1.0, 3.0]))
    out = net(x)
    rows = {n: _cross_entropy(_numpy(out[n]), y[n]) for n in LOSSES}
    by_hand = np.mean(w * rows["fine"]) + 3.0 * np.mean(w * rows["coarse"])
    unweighted = np.mean(rows["fine"]) + 3.0 * np.mean(rows["coarse"])
    assert abs(by_hand - unweighted) > 1e-2  # the weights matter on these rows
    assert _keras_value(net.compute_loss(x, y, out, sample_weight=w)) == pytest.approx(
        by_hand, rel=1e-5
    )
    only_fine = np.mean(w * rows["fine"]) + 3.0 * np.mean(rows["coarse"])
    got = _keras_value(net.compute_loss(x, y, out, sample_weight={"fine": w}))
    assert got == pytest.approx(only_fine, rel=1e-5)
    evaluated = net.evaluate(x, y, sample_weight=w, batch_size=32, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(by_hand, rel=1e-5)
    assert evaluated["fine_loss"] == pytest.approx(np.mean(w * rows["fine"]), rel=1e-5)
    plain = net.model  # the same network under Keras's own weighted sum of losses
    plain.compile(loss=LOSSES, loss_weights={"fine": 1.0, "coarse": 3.0})
    keras_loss = plain.evaluate(x, y, sample_weight=w, batch_size=32, verbose=0)
    keras_loss = keras_loss[0] if isinstance(keras_loss, list) else keras_loss
    assert keras_loss == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ValueError, match=r"unknown outputs \['level'\]"):
        net.compute_loss(x, y, out, sample_weight={"level": w})
    with pytest.raises(ValueError, match="sample_weight is a list"):
        net.compute_loss(x, y, out, sample_weight=[w, w])


BAD_MAPPINGS = [
    ([0, 0, 2], ValueError, "coarse classes [1] receive no fine class"),
    ({0: 0, 2: 1}, ValueError, "unknown fine classes [2]; expected 0..1"),
    ({0: 0, 1: -1, 2: 1}, ValueError, "fine -> coarse {1: -1} name negative coarse classes"),
    ([0, True], TypeError, "coarse class True is a bool"),
    ({0.0: 0, 1: 1}, TypeError, "fine class 0.0 (float) is not an integer"),
    ([], ValueError, "is empty"),
]


@pytest.mark.parametrize(("mapping", "error", "core"), BAD_MAPPINGS)
def test_a_bad_mapping_raises_at_construction_in_torch_and_keras(mapping, error, core):
    with pytest.raises(error) as torch_error:
        pt.Hierarchical("fine", "coarse", mapping)  # no bind: construction alone
    with pytest.raises(error) as keras_error:
        ptk.hierarchical("fine", "coarse", mapping)
    torch_message, keras_message = str(torch_error.value), str(keras_error.value)
    assert torch_message.startswith("Hierarchical('fine' -> 'coarse') mapping: ")
    assert keras_message.startswith("hierarchical('fine' -> 'coarse') mapping: ")
    assert torch_message.split(" mapping: ", 1)[1] == keras_message.split(" mapping: ", 1)[1]
    assert core in torch_message


def test_the_mapping_is_checked_against_class_counts_in_torch_and_keras():
    """A mapping valid alone but not for the outputs: torch at bind, Keras at compile."""
    mapping = [0, 0, 1, 1, 1]  # five fine classes; the model's fine output has four
    torch_term = pt.Hierarchical("fine", "coarse", mapping)
    with pytest.raises(ValueError) as torch_error:
        torch_term.bind(
            [pt.Task("fine", kind="multiclass", size=4), pt.Task("coarse", kind="binary")]
        )
    with pytest.raises(ValueError) as keras_error:
        ptk.compile_multitask(
            _two_output_model(), LOSSES, terms=[ptk.hierarchical("fine", "coarse", mapping)]
        )
    core = "unknown fine classes [4]; expected 0..3"
    assert str(torch_error.value).endswith(core) and str(keras_error.value).endswith(core)
    # numpy integers are integers: a mapping read from an array is accepted
    assert ptk.hierarchical("fine", "coarse", np.array([0, 0, 1, 1])).mapping == {
        0: 0,
        1: 0,
        2: 1,
        3: 1,
    }
