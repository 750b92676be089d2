"""Bad arguments to predict and evaluate, and bad batches to SparseLinear, get clear errors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import polytask as pt
from polytask.data import TaskData, csr_batch
from polytask.models import SparseLinear

TASKS = [pt.Task("a"), pt.Task("b")]


def _x(n=60, features=5):
    return np.random.default_rng(0).normal(size=(n, features)).astype("f4")


def _data(x=None, **options):
    x = _x() if x is None else x
    return pt.MultiTargetData(x, {"a": np.nan_to_num(x[:, 0]), "b": np.zeros(len(x))}, **options)


def _model(features=5):
    torch.manual_seed(0)
    return pt.MultiTaskModel(pt.mlp(features, 8, 2), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})


# -- against= -------------------------------------------------------------------------------------


def test_evaluate_refuses_an_unknown_against():
    with pytest.raises(
        ValueError, match=r"against must be one of \('targets', 'clean'\), got 'noisy'"
    ):
        pt.evaluate(_model(), TASKS, _data(), against="noisy")


def test_evaluate_refuses_clean_targets_for_per_task_data():
    data = {name: TaskData(_x(), np.zeros(60)) for name in ("a", "b")}
    with pytest.raises(ValueError, match=r"against='clean'.*per-task data.*\['a', 'b'\].*no clean"):
        pt.evaluate(_model(), TASKS, data, against="clean")
    assert set(pt.evaluate(_model(), TASKS, data)) == {"a", "b"}  # the targets still score


# -- non-finite inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_and_evaluate_refuse_non_finite_inputs(bad):
    x = _x()
    x[7, 2] = bad
    with pytest.raises(ValueError, match=r"inputs x: non-finite value \(NaN or inf\) at row 7"):
        pt.predict(_model(), TASKS, x)
    with pytest.raises(ValueError, match=r"inputs x: non-finite value \(NaN or inf\) at row 7"):
        pt.evaluate(_model(), TASKS, _data(x))


def test_non_finite_sparse_inputs_name_the_task_and_row():
    x = sp.random(30, 5, density=0.5, format="csr", random_state=0, dtype=np.float32)
    x.data[x.indptr[12]] = np.nan  # the first stored value of row 12
    assert x.indptr[13] > x.indptr[12]
    data = {"a": TaskData(x, np.zeros(30)), "b": TaskData(_x(30), np.zeros(30))}
    with pytest.raises(ValueError, match=r"task 'a': inputs x: non-finite value .* at row 12"):
        pt.evaluate(_model(), TASKS, data)


def test_nan_logits_do_not_score_as_accurate():
    x = np.full((6, 5), np.nan, dtype=np.float32)
    data = pt.MultiTargetData(x, {"c": np.zeros(6)})
    model = pt.MultiTaskModel(pt.mlp(5, 8, 2), {"c": nn.Linear(8, 1)})
    with pytest.raises(ValueError, match=r"inputs x: non-finite value .* at row 0"):
        pt.evaluate(model, [pt.Task("c", kind="binary")], data)


# -- shapes ---------------------------------------------------------------------------------------


def test_a_head_of_the_wrong_width_names_the_task_and_the_shapes():
    model = pt.MultiTaskModel(pt.mlp(5, 8, 2), {"c": nn.Linear(8, 3)})
    data = pt.MultiTargetData(_x(15), {"c": np.arange(15) % 4})
    expected = (
        r"task 'c': its head outputs shape \(15, 3\) for 15 rows, "
        r"expected \(15, 4\) for a multiclass task of size 4"
    )
    with pytest.raises(ValueError, match=expected):
        pt.evaluate(model, [pt.Task("c", kind="multiclass", size=4)], data)


def test_inputs_of_the_wrong_width_name_their_shape_and_keep_the_models_error():
    model = _model()
    model.train()
    expected = r"inputs x have 3 features \(shape \(4, 3\)\): the model cannot take them"
    with pytest.raises(ValueError, match=expected + r" \(its error: mat1 and mat2"):
        pt.predict(model, TASKS, np.zeros((4, 3)))
    assert model.training  # the mode is restored on the way out


def test_a_task_the_model_does_not_have_is_named():
    data = pt.MultiTargetData(_x(), {"zz": np.zeros(60)})
    with pytest.raises(ValueError, match=r"task 'zz' is not one of the model's tasks \['a', 'b'\]"):
        pt.evaluate(_model(), [pt.Task("zz")], data)
    with pytest.raises(ValueError, match=r"task 'zz' is not one of the model's tasks"):
        pt.predict(_model(), [pt.Task("zz")], _x())


def test_repeated_tasks_are_refused_rather_than_doubling_the_rows():
    with pytest.raises(ValueError, match=r"task names must be unique, got \['a', 'a'\]"):
        pt.predict(_model(), [pt.Task("a"), pt.Task("a")], _x())


# -- argument types -------------------------------------------------------------------------------


def test_task_names_instead_of_tasks_say_to_pass_task_objects():
    with pytest.raises(
        TypeError, match=r"tasks must be pt\.Task objects, got str 'a'.*pt\.Task\('a'"
    ):
        pt.evaluate(_model(), ["a", "b"], _data())
    with pytest.raises(TypeError, match=r"tasks must be a list of pt\.Task, got a single Task"):
        pt.predict(_model(), pt.Task("a"), _x())


def test_predict_refuses_a_dataset_where_inputs_are_expected():
    with pytest.raises(TypeError, match=r"inputs x: expected .*array.*got a MultiTargetData.*\.x"):
        pt.predict(_model(), TASKS, _data())


def test_evaluate_refuses_an_array_where_data_are_expected():
    with pytest.raises(
        TypeError, match=r"data must be a MultiTargetData or a mapping .*got ndarray"
    ):
        pt.evaluate(_model(), TASKS, _x())
    with pytest.raises(TypeError, match=r"task 'a': expected its data as a TaskData, got ndarray"):
        pt.evaluate(_model(), TASKS, {"a": _x(), "b": _x()})


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_batch_size_must_be_a_positive_int(batch_size):
    with pytest.raises(
        ValueError, match=f"batch_size must be a positive integer, got {batch_size}"
    ):
        pt.predict(_model(), TASKS, _x(), batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        pt.evaluate(_model(), TASKS, _data(), batch_size=batch_size)


def test_valid_calls_still_run():
    out = pt.predict(_model(), TASKS, _x(), batch_size=np.int64(7))
    assert out["a"].shape == (60,)
    # float32 products blocked by 7 rows or by 60 differ in the last bits
    whole = pt.predict(_model(), TASKS, _x())["a"]
    np.testing.assert_allclose(out["a"], whole, rtol=1e-5, atol=1e-6)
    assert set(pt.evaluate(_model(), tuple(TASKS), _data())["a"]) == {"mse", "mae"}


# -- SparseLinear ---------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [20, 40])
def test_sparse_linear_refuses_a_batch_of_another_width(width):
    layer = SparseLinear(30, 8)
    batch = sp.random(4, width, density=0.5, format="csr", random_state=0, dtype=np.float32)
    expected = f"SparseLinear expects 30 input columns, the batch has {width} .*refitted"
    with pytest.raises(ValueError, match=expected):
        layer(csr_batch(batch))
    with pytest.raises(ValueError, match=expected):
        layer(torch.from_numpy(batch.toarray()))
    assert layer(
        csr_batch(sp.random(4, 30, density=0.5, format="csr", dtype=np.float32))
    ).shape == (
        4,
        8,
    )


def test_predict_with_sparse_linear_names_the_width():
    model = pt.MultiTaskModel(nn.Sequential(SparseLinear(30, 8), nn.ReLU()), {"a": nn.Linear(8, 1)})
    x = sp.random(6, 20, density=0.5, format="csr", random_state=0, dtype=np.float32)
    with pytest.raises(ValueError, match=r"inputs x have 20 features.*SparseLinear expects 30"):
        pt.predict(model, [pt.Task("a")], x)
