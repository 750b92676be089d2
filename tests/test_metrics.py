"""Metrics against scikit-learn and numpy, evaluation against the clean targets."""

import numpy as np
import pytest
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
