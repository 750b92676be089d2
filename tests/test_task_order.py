"""The tasks may be listed in another order than the model's heads: the fit is the same."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import polytask as pt

ORDER = ["a", "b", "c"]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 5)).astype("f4")
    targets = {"a": x[:, 0], "b": x[:, 1] ** 2, "c": (x[:, 2] > 0).astype("f4")}
    train, stop, _ = pt.split(pt.MultiTargetData(x, targets), (0.5, 0.25, 0.25))
    torch.manual_seed(0)
    trunk = pt.mlp(5, 8, 2)
    heads = {name: nn.Linear(8, 1) for name in ORDER}
    return train, stop, trunk, heads


def model(setup, order):
    _, _, trunk, heads = setup
    return pt.MultiTaskModel(copy.deepcopy(trunk), {k: copy.deepcopy(heads[k]) for k in order})


@pytest.mark.parametrize(
    "method", ["mean", "weighted:1:2:3", "uw", "gradnorm", "upgrad", "upgrad@repr", "pcgrad"]
)
def test_heads_in_another_order_train_as_the_tasks_say(setup, method):
    train, stop = setup[0], setup[1]
    tasks = [pt.Task("a"), pt.Task("b"), pt.Task("c", "binary")]
    fits = []
    for order in (ORDER, ["c", "a", "b"]):
        net = model(setup, order)
        trainer = pt.Trainer(method, max_epochs=2, batch_size=16, quiet=True, device="cpu")
        history = trainer.fit(net, tasks, train, stop)
        fits.append((dict(net.named_parameters()), history))
    (first, history), (second, other) = fits
    for name, value in first.items():  # the same parameter by name: the same training
        torch.testing.assert_close(second[name], value, rtol=0, atol=1e-6)
    for name in ORDER:  # weights are reported by task name, whatever the heads' order
        assert other[f"weight/{name}"] == pytest.approx(history[f"weight/{name}"], abs=1e-6)
    if method.startswith("weighted"):  # positional weights follow the tasks given to fit
        assert history["weight/c"][0] == pytest.approx(3.0)


def test_engine_tasks_must_be_the_models():
    net = pt.MultiTaskModel(pt.mlp(3, 4, 1), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    with pytest.raises(ValueError, match=r"tasks=\['a', 'z'\], the model's tasks are"):
        pt.GradientEngine(net, "mean", tasks=["a", "z"])
    bound = pt.make_objective("mean")
    bound.bind(["b", "a"])
    with pytest.raises(ValueError, match=r"pass tasks=\['b', 'a'\] to GradientEngine"):
        pt.GradientEngine(net, bound)
    engine = pt.GradientEngine(net, bound, tasks=["b", "a"])
    assert engine.task_names == ("b", "a")
