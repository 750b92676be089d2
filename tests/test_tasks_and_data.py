"""Tasks (validation, losses), datasets, splits and the synthetic generators."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import polytask as pt


def test_default_loss_per_kind():
    out, target = torch.randn(6, 3), torch.tensor([0, 2, 1, 0, 1, 2])
    multiclass = pt.Task("c", kind="multiclass", size=3)
    torch.testing.assert_close(multiclass.compute_loss(out, target), F.cross_entropy(out, target))
    binary = pt.Task("b", kind="binary")
    logits, labels = torch.randn(6), torch.tensor([0, 1, 1, 0, 1, 0.0])
    expected = torch.mean(-(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits)))
    torch.testing.assert_close(binary.compute_loss(logits, labels), expected)
    regression = pt.Task("r", size=2)
    y = torch.randn(6, 2)
    torch.testing.assert_close(
        regression.compute_loss(out[:, :2], y), ((out[:, :2] - y) ** 2).mean()
    )
    multilabel = pt.Task("m", kind="multilabel", size=3)
    assert multilabel.metrics == ("accuracy", "macro_f1")


@pytest.mark.parametrize(
    ("task", "target", "message"),
    [
        (pt.Task("r"), torch.zeros(4, 2), r"task 'r'.*shape \(4, 2\), expected \(4,\)"),
        (pt.Task("r"), torch.tensor([0.0, float("nan")]), "task 'r'.*non-finite.*row 1"),
        (pt.Task("c", "multiclass", 3), torch.tensor([0, 3]), r"labels in \[0, 3\].*\[0, 3\)"),
        (pt.Task("c", "multiclass", 3), torch.tensor([0.5, 1.0]), "must be integers"),
        (pt.Task("b", "binary"), torch.tensor([0.0, 2.0]), "must be 0 or 1"),
    ],
)
def test_bad_targets_name_task_and_expectation(task, target, message):
    with pytest.raises(ValueError, match=message):
        task.prepare_target(target, "train")


def test_bad_task_definitions():
    with pytest.raises(ValueError, match="kind must be one of"):
        pt.Task("a", kind="ranking")
    with pytest.raises(ValueError, match="binary task has size 1"):
        pt.Task("a", kind="binary", size=2)
    with pytest.raises(ValueError, match="non-empty string name"):
        pt.Task("")


def test_column_target_of_shape_n_by_1_is_accepted():
    assert pt.Task("r").prepare_target(torch.ones(3, 1)).shape == (3,)


def test_split_is_consecutive_1_9_10():
    data = pt.MultiTargetData(np.arange(200.0), {"a": np.arange(200.0)})
    train, stop, test = pt.split(data)
    assert (len(train), len(stop), len(test)) == (10, 90, 100)
    assert train.x[-1, 0] == 9 and stop.x[0, 0] == 10 and test.x[0, 0] == 100
    with pytest.raises(ValueError, match="the train split is empty"):
        pt.split(pt.MultiTargetData(np.arange(5.0), {"a": np.arange(5.0)}))


def test_dataset_checks_rows():
    with pytest.raises(ValueError, match="task 'a': targets have 3 rows, inputs x have 4"):
        pt.MultiTargetData(np.zeros((4, 1)), {"a": np.zeros(3)})


def test_make_hetero_noise_grows_as_documented():
    data = pt.make_hetero(40000, n_tasks=4, seed=5)
    x = data.x[:, 0].numpy()
    assert x.min() >= 0 and x.max() <= 1
    clean = np.sin(2 * np.pi * x)
    for i, name in enumerate(data.task_names):
        np.testing.assert_allclose(data.clean_targets[name].numpy(), clean, atol=1e-6)
        noise = data.targets[name].numpy() - clean
        assert abs(noise.std() / (0.1 * 2**i) - 1) < 0.03
        assert abs(noise.mean()) < 0.05 * 2**i
    again = pt.make_hetero(40000, n_tasks=4, seed=5)
    assert torch.equal(again.targets["task3"], data.targets["task3"])


def test_make_phase_formula():
    data = pt.make_phase(50, n_tasks=5, seed=2)
    x = data.x[:, 0].numpy()
    for i, name in enumerate(data.task_names):
        expected = np.sin((2 * x + i / 5) * np.pi)
        np.testing.assert_allclose(data.targets[name].numpy(), expected, atol=1e-6)


# -- multilabel tasks with partial labels: each label masked on its own (issue #12) ------------


def test_multilabel_missing_label_stays_missing_and_is_not_trained_as_a_negative():
    task = pt.Task("m", kind="multilabel", size=3, allow_missing=True)
    nan = float("nan")
    target = torch.tensor([[1.0, nan, 0.0], [nan, nan, nan], [0.0, 1.0, 1.0]])
    prepared, known = task.prepare(target, "train")
    assert known.tolist() == [True, False, True]  # a row with one known label is labelled
    assert torch.isnan(prepared[0, 1]) and prepared[0, [0, 2]].tolist() == [1.0, 0.0]
    assert not torch.isnan(prepared[1]).any()  # an unlabelled row holds a placeholder
    logits = torch.tensor([[0.3, 4.0, -1.0], [9.0, 9.0, 9.0], [-2.0, 0.5, 1.5]], requires_grad=True)
    loss = task.compute_loss(logits, prepared, known)
    # by hand: BCE of the five known labels only, -log sigmoid(+-z)
    z = torch.tensor([0.3, -1.0, -2.0, 0.5, 1.5])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    expected = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and (logits.grad[1] == 0).all()  # no pull towards 0


def test_multilabel_partial_rows_refuse_a_custom_loss():
    task = pt.Task(
        "m", kind="multilabel", size=2, allow_missing=True, loss=F.binary_cross_entropy_with_logits
    )
    with pytest.raises(ValueError, match=r"task 'm', train split: row 1 has some labels missing"):
        task.prepare(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), "train")
    whole_rows, known = task.prepare(torch.tensor([[1.0, 0.0], [float("nan")] * 2]), "train")
    assert known.tolist() == [True, False] and not torch.isnan(whole_rows).any()
