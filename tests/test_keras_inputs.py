"""polytask.keras weighs rows, masks and precisions as Keras does, and refuses what it would
silently ignore."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the 'keras' extra is not installed")
ptk = pytest.importorskip("polytask.keras")
ops = keras.ops

RNG = np.random.default_rng(0)
Y_TRUE = RNG.normal(size=(8, 3)).astype("float32")
Y_PRED = RNG.normal(size=(8, 3)).astype("float32")
HALF = np.array([1, 1, 1, 1, 0, 0, 0, 0], "float32")


def value(x) -> float:
    return float(ops.convert_to_numpy(x))


def test_sample_weight_weighs_rows_as_keras_does():
    # the mean of the columns is Keras's own MSE, sample weights included: sum_i w_i l_i / n
    keras_mse = keras.losses.MeanSquaredError()(Y_TRUE, Y_PRED, sample_weight=HALF)
    assert value(ptk.Mean()(Y_TRUE, Y_PRED, sample_weight=HALF)) == pytest.approx(value(keras_mse))
    # a row of weight 0 does not count: the geometric mean of the first rows' MSEs (times 4/8)
    per_task = ((Y_PRED[:4] - Y_TRUE[:4]) ** 2).mean(0) * 4 / 8
    got = value(ptk.GeometricMean()(Y_TRUE, Y_PRED, sample_weight=HALF))
    assert got == pytest.approx(float(np.exp(np.log(per_task).mean())), rel=1e-5)
    weighted = ptk.Weighted([1.0, 2.0, 0.5])(Y_TRUE, Y_PRED, sample_weight=HALF)
    assert value(weighted) == pytest.approx(float(per_task @ np.array([1.0, 2.0, 0.5])), rel=1e-5)
    with pytest.raises(ValueError, match=r"sample_weight of shape \(5,\) for 8 rows"):
        ptk.Mean()(Y_TRUE, Y_PRED, sample_weight=np.ones(5, "float32"))


def test_masked_rows_are_left_out_as_keras_leaves_them_out():
    x = RNG.normal(size=(8, 2)).astype("float32")
    x[4:] = 0.0  # masked by Masking(0.)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Masking(0.0), keras.layers.Dense(3)])
    model.compile(loss=ptk.Mean())
    got = model.evaluate(x, Y_TRUE, batch_size=8, verbose=0)
    model.compile(loss="mse")
    assert got == pytest.approx(model.evaluate(x, Y_TRUE, batch_size=8, verbose=0), rel=1e-5)
    prediction = model.predict(x, verbose=0)
    unmasked = ((prediction[:4] - Y_TRUE[:4]) ** 2).mean()
    assert got == pytest.approx(float(unmasked), rel=1e-5)


def test_a_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction='sum' does not apply"):
        ptk.GeometricMean(reduction="sum")
    assert ptk.GeometricMean.from_config(ptk.GeometricMean().get_config()).name  # round trip


def test_a_float16_hierarchical_term_stays_finite():
    term = ptk.hierarchical("f", "c", [0, 0, 1, 2, 2])
    fine = np.array([[1, 0, 0, 0, 0]], "float16")
    coarse = np.array([[1, 0, 0]], "float16")
    assert value(term({"f": fine, "c": coarse})) == pytest.approx(0.0, abs=1e-3)
    losses = ops.convert_to_tensor(np.array([0.0, 0.25], "float16"))
    assert np.isfinite(value(ptk.GeometricMean().combine(losses)))


def test_compile_multitask_refuses_what_it_would_ignore():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, {"a": keras.layers.Dense(1)(inputs)})
    with pytest.raises(ValueError, match=r"\['loss_weights'\] would be ignored"):
        ptk.compile_multitask(model, {"a": "mse"}, loss_weights={"a": 0.0})
    sequential = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"outputs must be a dict of named tensors .* Sequential"):
        ptk.compile_multitask(sequential, {"a": "mse"})


def test_constructors_name_what_they_expect():
    with pytest.raises(TypeError, match="one number per output column, in column order"):
        ptk.Weighted({"a": 1.0, "b": 2.0})
    with pytest.raises(TypeError, match="one number per output column"):
        ptk.Weighted("12")
    with pytest.raises(ValueError, match=r"n_tasks must be a positive integer, got 2\.5"):
        ptk.Uncertainty(2.5)


def test_task_mse_takes_arrays():
    got = ops.convert_to_numpy(ptk.task_mse(np.ones((4, 3)), np.zeros((4, 3))))
    np.testing.assert_allclose(got, np.ones(3))
