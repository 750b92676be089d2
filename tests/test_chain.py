"""The exact path's written-out pull-back for chains of linear layers, and the sliced Gramian:
both against independent computations (one autograd.grad per task, numpy-free products)."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import polytask as pt
from polytask.engine import _chain, _linalg, combine_rows, gramian
from polytask.engine._linalg import _CHUNK

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": None}


@st.composite
def chains(draw):
    """A random chain of linear layers and supported activations, possibly reusing a layer."""
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers.append(nn.Linear(fan_in, fan_out, bias=draw(st.booleans())))
        activation = ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]
        if activation is not None:
            layers.append(activation())
    if widths[-1] == widths[-2] and draw(st.booleans()):  # the last layer applied twice
        last = [m for m in layers if isinstance(m, nn.Linear)][-1]
        layers += [last, nn.Tanh()]
    return nn.Sequential(*layers).double(), widths[0]


def naive_blocks(z, params, jz):
    """Per task, one ordinary backward of <jz_t, z>: the reference Jacobian."""
    rows = [torch.autograd.grad(z, params, g, retain_graph=True) for g in jz]
    return [torch.stack(column) for column in zip(*rows, strict=True)]


@settings(max_examples=60, deadline=None)
@given(chain=chains(), n_tasks=st.integers(1, 4), batch=st.integers(1, 6), seed=st.integers(0, 99))
def test_written_out_pull_back_is_the_jacobian(chain, n_tasks, batch, seed):
    trunk, fan_in = chain
    torch.manual_seed(seed)
    for layer in trunk:
        if isinstance(layer, nn.Linear):  # larger than the default init, so activations vary
            nn.init.normal_(layer.weight, std=1.0)
    params = list(trunk.parameters())
    z = trunk(torch.randn(batch, fan_in, dtype=torch.float64))
    jz = torch.randn(n_tasks, *z.shape, dtype=torch.float64)
    layers = _chain.read_chain(z, params)
    assert layers is not None
    before = jz.clone()
    got = _chain.chain_jacobian(layers, jz, params)
    assert torch.equal(jz, before)  # the caller's feature gradients are left as they were
    for block, ref, param in zip(got, naive_blocks(z, params, jz), params, strict=True):
        assert block.shape == (n_tasks, *param.shape)
        torch.testing.assert_close(block, ref)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.ReLU()),
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1)),
    ],
    ids=["gelu", "dropout", "batchnorm", "two activations", "softmax"],
)
def test_other_layers_take_the_general_path(make):
    trunk = make().train()
    z = trunk(torch.randn(5, 3))
    assert _chain.read_chain(z, list(trunk.parameters())) is None


def test_a_chain_that_misses_or_adds_parameters_takes_the_general_path():
    trunk = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    z = trunk(torch.randn(5, 3))
    params = list(trunk.parameters())
    assert _chain.read_chain(z, params) is not None
    extra = nn.Parameter(torch.zeros(2))
    assert _chain.read_chain(z, [*params, extra]) is None  # a shared parameter z does not reach
    assert _chain.read_chain(z, params[:2]) is None  # a parameter that is not shared
    trunk[0].weight.requires_grad_(False)  # a frozen weight: no leaf behind its edge
    z = trunk(torch.randn(5, 3))
    assert _chain.read_chain(z, [p for p in params if p.requires_grad]) is None
    three_d = nn.Linear(3, 4)(torch.randn(2, 5, 3))  # Linear on a 3-D input is not addmm
    assert _chain.read_chain(three_d, list(nn.Linear(3, 4).parameters())) is None


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_exact_step_is_the_same_with_or_without_the_written_out_pull_back(activation, monkeypatch):
    """UPGrad's whole exact step (weights and every gradient), through the written-out pull-back
    (ReLU) or the vmap it falls back to (GELU), equals the step on the naive path: one ordinary
    backward per task."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randn(64, 3)
    y[:, 1] = -2 * y[:, 0]

    def run(method):
        torch.manual_seed(1)  # the heads draw from the global generator
        model = pt.MultiTaskModel(
            pt.mlp(5, 8, 3, activation=activation, seed=0),
            {f"t{i}": nn.Linear(8, 1) for i in range(3)},
        )
        engine = pt.GradientEngine(model, method)
        features = engine.split(model.features(x))
        out = model.heads_forward(features)
        losses = torch.stack([((out[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(3)])
        step = engine.backward(losses, features)
        return step.weights, [p.grad.clone() for p in model.parameters()]

    calls = []
    read = _chain.read_chain
    monkeypatch.setattr(_linalg, "read_chain", lambda *a: calls.append(read(*a)) or calls[-1])
    weights, grads = run("upgrad")
    assert (calls[-1] is None) == (activation == "gelu")
    calls.clear()
    weights_ref, grads_ref = run("upgrad@naive")
    assert not calls  # the naive path reads no chain
    torch.testing.assert_close(weights, weights_ref, rtol=1e-5, atol=1e-7)
    for g, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("missing", ["_saved_mat1", "_saved_alpha", "_saved_result"])
def test_a_torch_without_the_private_saved_tensors_takes_the_general_path(missing, monkeypatch):
    """The written-out pull-back reads private autograd attributes. On this torch they exist
    (the chain is read); a torch without one of them gets the vmap path, with the same step."""
    torch.manual_seed(0)
    trunk = pt.mlp(5, 8, 3, seed=0)
    z = trunk(torch.randn(16, 5))
    assert _chain.read_chain(z, list(trunk.parameters())) is not None  # fails if torch drops them
    saved = _chain._saved
    monkeypatch.setattr(
        _chain, "_saved", lambda n, name: None if name == missing else saved(n, name)
    )
    assert _chain.read_chain(z, list(trunk.parameters())) is None

    x, y = torch.randn(32, 5), torch.randn(32, 2)

    def step():
        torch.manual_seed(1)
        model = pt.MultiTaskModel(
            pt.mlp(5, 8, 3, seed=0), {f"t{i}": nn.Linear(8, 1) for i in range(2)}
        )
        engine = pt.GradientEngine(model, "upgrad")
        features = engine.split(model.features(x))
        out = model.heads_forward(features)
        losses = torch.stack([((out[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(2)])
        engine.backward(losses, features)
        return [p.grad.clone() for p in model.parameters()]

    fallback = step()
    monkeypatch.setattr(_chain, "_saved", saved)
    for g, ref in zip(fallback, step(), strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 5),
    n=st.one_of(st.integers(1, 40), st.integers(2 * _CHUNK - 3, 3 * _CHUNK + 3)),
    seed=st.integers(0, 99),
)
def test_sliced_gramian_and_update_match_the_plain_products(k, n, seed):
    generator = torch.Generator().manual_seed(seed)
    block = torch.randn(k, n, dtype=torch.float64, generator=generator)
    weights = torch.randn(k, dtype=torch.float64, generator=generator)
    expected = torch.einsum("in,jn->ij", block, block)
    torch.testing.assert_close(
        gramian([block, block[:, :1]]), expected + block[:, :1] @ block[:, :1].T
    )
    torch.testing.assert_close(combine_rows(weights, block), (weights[:, None] * block).sum(0))
    shaped = block.reshape(k, 1, n)
    assert combine_rows(weights, shaped).shape == (1, n)
