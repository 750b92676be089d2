"""The data layer: evaluation means over what the losses average, inputs in other containers,
masks and schedule numbers checked."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import polytask as pt
from polytask.data import Schedule


def test_a_multilabel_stop_loss_does_not_depend_on_the_chunk_size():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("f4")
    y = (rng.random((40, 3)) > 0.5).astype("f4")
    y[:20, 1:] = np.nan  # the first rows know one label of three
    data = pt.MultiTargetData(x, {"m": y})
    torch.manual_seed(0)
    model = pt.MultiTaskModel(nn.Linear(3, 4), {"m": nn.Linear(4, 3)})
    tasks = [pt.Task("m", kind="multilabel", size=3, allow_missing=True)]
    with torch.no_grad():
        whole = tasks[0].compute_loss(model(torch.from_numpy(x))["m"], torch.from_numpy(y))
    for chunk in (1, 10, 40, 8192):
        got = pt.Trainer(eval_batch_size=chunk, device="cpu").losses_on(model, tasks, data)
        assert float(got[0]) == pytest.approx(float(whole), rel=1e-6), chunk


def test_torch_sparse_inputs_become_scipy_csr():
    dense = sp.random(6, 5, density=0.5, format="csr", dtype=np.float32, random_state=0)
    tensor = torch.tensor(dense.toarray())
    for given in (tensor.to_sparse_csr(), tensor.to_sparse()):
        data = pt.TaskData(given, np.arange(6.0))
        assert data.sparse
        np.testing.assert_array_equal(data.x.toarray(), dense.toarray())


def test_sparse_inputs_in_one_multitarget_data_say_where_they_go():
    x = sp.random(6, 5, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match="sparse inputs go in one TaskData per task"):
        pt.MultiTargetData(x, {"a": np.arange(6.0)})


@pytest.mark.parametrize("mask", [[0, 1, 2, 1, 0, 1], [1.0, np.nan, 1.0, 0.0, 1.0, 1.0]])
def test_a_task_data_mask_is_one_flag_per_row(mask):
    with pytest.raises(ValueError, match="mask: values must be 0 or 1"):
        pt.TaskData(np.zeros((6, 2)), np.arange(6.0), mask=mask)
    assert pt.TaskData(np.zeros((6, 2)), np.arange(6.0), mask=[1, 0, 1, 0, 1, 1]).mask.sum() == 4


def test_schedule_numbers_are_checked():
    for options, message in [
        ({"size_cap": True}, r"size_cap \(or None\) must be a positive integer, got True"),
        ({"size_cap": 2.5}, r"size_cap \(or None\) must be a positive integer, got 2\.5"),
        ({"temperature": float("inf")}, "temperature must be positive and finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            Schedule("temperature", **options)
    for batch_size in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            Schedule().epoch({"a": 5}, batch_size, seed=0)
    with pytest.raises(ValueError, match="the size of task 'a' must be a non-negative integer"):
        Schedule().epoch({"a": 5.5}, 2, seed=0)


def test_a_low_temperature_draws_the_largest_task_without_overflow():
    probabilities = Schedule("temperature", temperature=0.01).probabilities({"a": 1000, "b": 2000})
    assert probabilities["b"] == pytest.approx(1.0)
    assert 0 <= probabilities["a"] < 1e-20
    steps = Schedule("temperature", temperature=0.01).epoch({"a": 1000, "b": 2000}, 100, seed=0)
    assert {task for step in steps for task, _ in step} == {"b"}


def test_a_loader_that_does_not_shuffle_cut_short_by_min_size_is_warned_of():
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    big = DataLoader(TensorDataset(x, x[:, 0]), batch_size=5)  # no shuffle
    small = DataLoader(TensorDataset(x[:7], x[:7, 0]), batch_size=5)
    model = pt.MultiTaskModel(nn.Linear(2, 3), {"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})
    tasks, data = [pt.Task("a"), pt.Task("b")], {"a": big, "b": small}
    trainer = pt.Trainer(
        max_epochs=2, quiet=True, device="cpu", schedule=Schedule(size_mode="min_size")
    )
    with pytest.warns(UserWarning, match="task 'a': its DataLoader does not shuffle.* 2 of its 10"):
        trainer.fit(model, tasks, data, data)


def test_bag_of_words_names_the_task_whose_labels_do_not_fit():
    from polytask.data import bag_of_words

    with pytest.raises(ValueError, match="task 'a': targets y have 2 rows, inputs x have 3"):
        bag_of_words({"a": (["good film", "bad film", "fine"], [1, 0])})
    with pytest.raises(TypeError, match="task 'a': targets y: got strings"):
        bag_of_words({"a": (["good film", "bad film"], ["pos", "neg"])})


def test_split_checks_its_seed_and_fractions():
    data = pt.MultiTargetData(np.zeros((20, 2)), {"a": np.zeros(20)})
    with pytest.raises(ValueError, match=r"shuffle_seed \(or None\) must be a non-negative"):
        pt.split(data, shuffle_seed="abc")
    with pytest.raises(ValueError, match="fractions must be 3 non-negative numbers summing to 1"):
        pt.split(data, (float("nan"), 0.5, 0.5))
    assert len(pt.split(data, (0.5, 0.25, 0.25), shuffle_seed=np.int64(3))[0]) == 10
