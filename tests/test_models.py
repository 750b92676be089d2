"""Routing by task name, column heads and the MLP builder."""

import math

import pytest
import torch
from torch import nn

import polytask as pt
from conftest import small_model


def test_forward_returns_every_task_or_only_the_named_one():
    model = small_model()
    x = torch.randn(7, 1)
    outputs = model(x)
    assert list(outputs) == ["task0", "task1", "task2"]
    torch.testing.assert_close(model(x, task="task1"), outputs["task1"])


@pytest.mark.parametrize("columns", [False, True])
def test_a_tasks_loss_reaches_only_its_own_head(columns):
    model = small_model(columns=columns)
    model(torch.randn(5, 1), task="task1").square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())
    if columns:  # one shared output layer: only the task's own row gets a gradient
        weight = model.heads.layer.weight.grad
        assert weight[1].abs().sum() > 0
        assert weight[[0, 2]].abs().sum() == 0
    else:
        for name in ("task0", "task2"):
            assert all(p.grad is None for p in model.task_parameters(name))
        assert all(p.grad.abs().sum() > 0 for p in model.task_parameters("task1"))


def test_unknown_task_lists_the_known_ones():
    model = small_model()
    with pytest.raises(KeyError, match=r"unknown task 'task9'.*\['task0', 'task1', 'task2'\]"):
        model(torch.zeros(2, 1), task="task9")


def test_column_heads_split_one_output_layer():
    layer = nn.Linear(3, 4)
    heads = pt.ColumnHeads(layer, {"a": 1, "b": 3})
    h = torch.randn(6, 3)
    out = heads(h)
    torch.testing.assert_close(torch.cat([out["a"], out["b"]], dim=1), layer(h))
    with pytest.raises(ValueError, match="need 5"):
        pt.ColumnHeads(nn.Linear(3, 4), {"a": 2, "b": 3})(h)


def test_mlp_glorot_init_is_keras_default_and_seeded():
    net = pt.mlp(1, 100, 10, out_features=5, init="glorot", seed=3)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert len(linears) == 11
    for layer in linears:
        limit = math.sqrt(6 / (layer.in_features + layer.out_features))
        largest = float(layer.weight.detach().abs().max())
        assert 0.9 * limit < largest <= limit  # uniform on [-limit, limit] fills the range
        assert torch.count_nonzero(layer.bias) == 0
    again = pt.mlp(1, 100, 10, out_features=5, init="glorot", seed=3)
    other = pt.mlp(1, 100, 10, out_features=5, init="glorot", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters(), strict=True))
    assert not torch.equal(net[0].weight, other[0].weight)


def test_mlp_torch_init_reproduces_pytorch_bounds_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    net = pt.mlp(4, 8, 2, init="torch", activation="tanh", seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    weight, bias = net[0].weight.detach(), net[0].bias.detach()
    bound = 1 / math.sqrt(4)
    assert float(weight.abs().max()) <= bound
    assert float(bias.abs().max()) <= bound and torch.count_nonzero(bias) > 0
    assert isinstance(net[1], nn.Tanh)


def test_mlp_rejects_unknown_activation_and_init():
    with pytest.raises(ValueError, match="activation must be one of"):
        pt.mlp(1, 2, 1, activation="swishy")
    with pytest.raises(ValueError, match="init must be"):
        pt.mlp(1, 2, 1, init="he")
