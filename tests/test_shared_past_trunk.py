"""A layer that some tasks share past the trunk (hierarchical sharing): every gradient path gives
it its share of the update, and it counts in the task Jacobian as the shared parameter it is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polytask as pt

TASKS = ["a", "b", "c"]
PATHS = ["upgrad", "upgrad@repr", "mgda@repr", "pcgrad", "cagrad"]


class Hierarchical(nn.Module):
    """A trunk every task reads, then a layer only tasks a and b read, then one head each."""

    def __init__(self, in_features: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(in_features, 16), nn.Tanh())
        self.common = nn.Linear(16, 16)
        self.heads = nn.ModuleList([nn.Linear(16, 1) for _ in TASKS])

    def forward(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        h = self.trunk(x)
        if task_id < 2:
            h = torch.tanh(self.common(h))
        return self.heads[task_id](h)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=g), torch.randn(32, 3, generator=g)


def _losses(outputs, y):
    return {t: ((outputs[t].squeeze(-1) - y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)}


def _expected_grads(model, net, x, y, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_t w_t dL_t/dp for every parameter of ``net``, from one plain backward of the
    weighted sum through ``model`` (which wraps it)."""
    net.zero_grad()
    losses = _losses(model(x), y)
    sum(w * losses[t] for w, t in zip(weights, TASKS, strict=True)).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    return grads


def _user_model(call_first: bool):
    net = Hierarchical()
    model = pt.as_multitask(net, TASKS, shared="trunk", route="task_id", keys=range(3))
    if call_first:  # the trainer's first check runs the module once; a user's loop may not
        model(_batch()[0])
    return net, model


@pytest.mark.parametrize("call_first", [False, True])
def test_the_shared_parameters_do_not_depend_on_a_first_call(call_first):
    net, model = _user_model(call_first)
    model.features(_batch()[0])
    names = {id(p): n for n, p in net.named_parameters()}
    shared = sorted(names[id(p)] for p in model.shared_parameters())
    assert shared == ["common.bias", "common.weight", "trunk.0.bias", "trunk.0.weight"]


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("call_first", [False, True])
def test_a_layer_shared_past_the_trunk_gets_its_update(method, call_first):
    net, model = _user_model(call_first)
    x, y = _batch()
    engine = pt.GradientEngine(model, method)
    step = engine.backward(_losses(engine.forward(x), y))
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    expected = _expected_grads(model, net, x, y, step.weights.detach())
    assert got["common.weight"].abs().sum() > 0  # was exactly 0 on the leaf paths
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["upgrad", "mgda", "pcgrad"])
@pytest.mark.parametrize("call_first", [False, True])
def test_the_exact_path_counts_the_later_layer_in_the_jacobian(method, call_first):
    """The exact path's weights equal the naive path's (one backward per task over every
    shared parameter), which they would not if the later shared layer were left out."""
    x, y = _batch()
    weights = {}
    for path in ("exact", "naive"):
        _, model = _user_model(call_first=call_first)
        engine = pt.GradientEngine(model, method, path=path)
        torch.manual_seed(3)  # PCGrad's order
        weights[path] = engine.backward(_losses(engine.forward(x), y)).weights
    torch.testing.assert_close(weights["exact"], weights["naive"], rtol=1e-4, atol=1e-6)


def test_a_module_given_to_two_heads_is_shared():
    torch.manual_seed(0)
    common = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    heads = {
        "a": nn.Sequential(common, nn.Linear(8, 1)),
        "b": nn.Sequential(common, nn.Linear(8, 1)),
        "c": nn.Linear(8, 1),
    }
    model = pt.MultiTaskModel(nn.Sequential(nn.Linear(4, 8), nn.Tanh()), heads)
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in common.parameters())
    assert not any(id(p) in shared for p in heads["c"].parameters())
    x, y = _batch()
    weights = {}
    for path in ("exact", "naive"):
        engine = pt.GradientEngine(model, "upgrad", path=path)
        model.zero_grad()
        step = engine.backward(_losses(engine.forward(x), y))
        weights[path] = step.weights
        got = {n: p.grad.clone() for n, p in model.named_parameters()}
        expected = _expected_grads(model, model, x, y, step.weights.detach())
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(weights["exact"], weights["naive"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["upgrad", "upgrad@repr"])
def test_the_trainer_moves_the_later_layer_on_every_path(method):
    net = Hierarchical(in_features=1)
    before = net.common.weight.detach().clone()
    train, stop, _ = pt.split(pt.make_hetero(300, n_tasks=3, seed=0))
    names = [f"task{i}" for i in range(3)]
    model = pt.as_multitask(net, names, shared="trunk", route="task_id", keys=range(3))
    pt.Trainer(method, max_epochs=1, quiet=True, seed=0, device="cpu").fit(
        model, pt.regression_tasks(names), train, stop
    )
    assert (net.common.weight.detach() - before).abs().max() > 1e-4
