"""Metrics against scikit-learn and numpy, evaluation against the clean targets."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

import polytask as pt
from polytask.evaluation import task_metrics


def test_classification_metrics_match_sklearn(rng):
    logits = rng.normal(size=200)
    labels = (rng.uniform(size=200) < 0.4).astype(np.float32)
    got = task_metrics(pt.Task("b", kind="binary"), logits, labels)
    predicted = (1 / (1 + np.exp(-logits)) > 0.5).astype(int)
    assert got["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, logits))
    scores = rng.normal(size=(150, 4))
    classes = rng.integers(0, 4, size=150)
    got = task_metrics(pt.Task("c", kind="multiclass", size=4), scores, classes)
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(classes, scores.argmax(1), average="macro")
    )
    assert got["accuracy"] == pytest.approx(np.mean(scores.argmax(1) == classes))


def test_regression_metrics_and_evaluate_against_clean():
    data = pt.MultiTargetData(
        np.array([[0.0], [1.0], [2.0]]), {"a": np.array([1.0, 1.0, 4.0])}, {"a": np.zeros(3)}
    )
    layer = nn.Linear(1, 1)
    nn.init.ones_(layer.weight)
    nn.init.zeros_(layer.bias)
    model = pt.MultiTaskModel(nn.Identity(), {"a": layer})  # predicts x
    noisy = pt.evaluate(model, [pt.Task("a")], data)["a"]
    assert noisy["mse"] == pytest.approx(np.mean((np.array([0, 1, 2]) - [1, 1, 4]) ** 2))
    assert noisy["mae"] == pytest.approx(1.0)
    assert pt.evaluate(model, [pt.Task("a")], data, against="clean")["a"]["mse"] == pytest.approx(
        5 / 3
    )
    with pytest.raises(ValueError, match="no clean targets"):
        pt.evaluate(
            model, [pt.Task("a")], pt.MultiTargetData(data.x, data.targets), against="clean"
        )


# -- multilabel metrics with missing labels (issue #12) -----------------------------------------


METRICS_ML = ("accuracy", "macro_f1", "auc")


def _with_holes(rng, n=120, labels=4, share=0.3):
    logits = rng.normal(size=(n, labels))
    target = (rng.uniform(size=(n, labels)) < 0.4).astype(float)
    holes = rng.uniform(size=target.shape) < share
    holes[0] = False  # row 0 complete, row 1 with one known label
    holes[1] = [True] * (labels - 1) + [False]
    return logits, target, np.where(holes, np.nan, target)


def test_multilabel_metrics_skip_each_missing_label(rng):
    task = pt.Task("m", kind="multilabel", size=4, metrics=METRICS_ML, allow_missing=True)
    logits, full, holed = _with_holes(rng)
    got = task_metrics(task, logits, holed)
    predicted = (logits > 0).astype(int)
    per_label = []
    for j in range(4):
        known = ~np.isnan(holed[:, j])
        per_label.append(skm.f1_score(full[known, j], predicted[known, j], zero_division=0))
    assert got["macro_f1"] == pytest.approx(np.mean(per_label))
    aucs = [
        skm.roc_auc_score(full[~np.isnan(holed[:, j]), j], logits[~np.isnan(holed[:, j]), j])
        for j in range(4)
    ]
    assert got["auc"] == pytest.approx(np.mean(aucs))
    missing = np.isnan(holed)
    rows = [i for i in range(120) if not missing[i].all()]  # rows with a known label
    assert len(rows) < 120  # the draw has a row without any label
    hits = [np.array_equal(predicted[i][~missing[i]], full[i][~missing[i]]) for i in rows]
    assert got["accuracy"] == pytest.approx(np.mean(hits))
    # without holes: scikit-learn's own multilabel scores
    complete = task_metrics(task, logits, full)
    assert complete["macro_f1"] == pytest.approx(
        skm.f1_score(full, predicted, average="macro", zero_division=0)
    )
    assert complete["accuracy"] == pytest.approx(skm.accuracy_score(full, predicted))


def test_a_label_unknown_in_the_whole_split_is_left_out_of_macro_f1(rng):
    task = pt.Task("m", kind="multilabel", size=3, metrics=("macro_f1",), allow_missing=True)
    logits, full, _ = _with_holes(rng, labels=3, share=0.0)
    holed = full.copy()
    holed[:, 1] = np.nan  # label 1 has no known row here
    predicted = (logits > 0).astype(int)
    expected = np.mean([skm.f1_score(full[:, j], predicted[:, j], zero_division=0) for j in (0, 2)])
    assert task_metrics(task, logits, holed)["macro_f1"] == pytest.approx(expected)
    assert np.isnan(task_metrics(task, logits, np.full_like(full, np.nan))["macro_f1"])


@pytest.mark.parametrize("kind", ["multilabel", "multiclass"])
def test_f1_of_one_binary_output_is_refused_for_other_kinds(kind):
    with pytest.raises(
        ValueError,
        match=f"task 'm': the metric 'f1' scores one binary output; a {kind} task takes 'macro_f1'",
    ):
        pt.Task("m", kind=kind, size=3, metrics=("f1",))


def test_evaluate_multilabel_does_not_score_missing_labels_as_negatives():
    # the model predicts "positive" for every label; the missing labels are where a 0 would
    # turn a hit into a false positive
    nan = float("nan")
    x = np.zeros((4, 1))
    y = np.array([[1.0, nan], [1.0, 1.0], [nan, 1.0], [1.0, nan]])
    head = nn.Linear(1, 2)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, 3.0)
    model = pt.MultiTaskModel(nn.Identity(), {"m": head})
    task = pt.Task("m", kind="multilabel", size=2, allow_missing=True)
    got = pt.evaluate(model, [task], pt.MultiTargetData(x, {"m": y}))["m"]
    assert got == {"accuracy": 1.0, "macro_f1": 1.0}


def test_metric_directions_come_from_the_registry():
    from polytask.evaluation import METRICS, greater_is_better, metric_info

    assert greater_is_better("macro_f1") and not greater_is_better("mse")
    assert metric_info("mse").ratio_scale and not metric_info("accuracy").ratio_scale
    with pytest.raises(ValueError, match=r"unknown metric 'r2'.*known metrics: \['accuracy'"):
        greater_is_better("r2")
    with pytest.raises(ValueError, match="unknown metric 'r2'"):
        task_metrics(pt.Task("y", metrics=("r2",)), np.zeros(2), np.zeros(2))
    assert set(METRICS) == {"mse", "mae", "accuracy", "f1", "macro_f1", "auc"}


# -- predict(device=) leaves the caller's model as it found it (issue #12) ----------------------


class _RecordsMoves(nn.Module):
    """Outputs zeros on the CPU; ``to`` records the device asked for instead of moving."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.moves: list[torch.device] = []

    def to(self, device):  # type: ignore[override]
        self.moves.append(torch.device(device))
        return self

    def forward(self, x):
        return {"a": torch.zeros(x.shape[0], 1)}


def test_predict_on_another_device_moves_the_model_back():
    model = _RecordsMoves()
    with torch.device("meta"):  # a model "elsewhere" (its to() records and does not move)
        model.weight = nn.Parameter(torch.zeros(1))
    model.train()
    pt.predict(model, [pt.Task("a")], np.zeros((5, 1)), device="cpu")
    assert model.moves == [torch.device("cpu"), torch.device("meta")]
    assert model.training
    model.moves.clear()
    with pytest.raises(ValueError, match="holds no data"):  # moving there would lose the weights
        pt.predict(model, [pt.Task("a")], np.zeros((5, 1)), device="meta")
    assert model.moves == []


def test_predict_restores_train_mode_when_the_forward_fails():
    model = pt.MultiTaskModel(nn.Linear(2, 3), {"a": nn.Linear(3, 1)})
    model.train()
    with pytest.raises(ValueError, match=r"inputs x have 5 features \(shape \(4, 5\)\)"):
        pt.predict(model, [pt.Task("a")], np.zeros((4, 5)), device="cpu")  # wrong width
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_leaves_a_cpu_model_on_the_cpu():
    model = pt.MultiTaskModel(nn.Linear(2, 3), {"a": nn.Linear(3, 1)})
    expected = pt.predict(model, [pt.Task("a")], np.ones((4, 2)))["a"]
    got = pt.predict(model, [pt.Task("a")], np.ones((4, 2)), device="cuda")["a"]
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    np.testing.assert_allclose(got, expected, rtol=1e-5)
