"""The representation path's closed form for linear heads (``engine/_heads.py``): the Gramian,
the trunk's seed and the heads' gradients against the formed feature gradients (one
autograd.grad per task), the engine's update with and without it, and every head it must leave
to the general path."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import polytask as pt
from polytask.engine import _chain, _gradients, _heads


class Then(nn.Module):
    """A linear layer followed by more of the head (the closed form needs only the first)."""

    def __init__(self, first: nn.Linear, rest: nn.Module) -> None:
        super().__init__()
        self.first, self.rest = first, rest

    def forward(self, z):
        return self.rest(self.first(z))


@st.composite
def heads_setups(draw):
    """Random heads on a batch of features: plain linear heads (with or without bias), a
    linear layer followed by a nonlinear rest, or the column slices of one output layer."""
    k = draw(st.integers(1, 4))
    rows, width = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    kind = draw(st.sampled_from(["linear", "deeper", "columns"]))
    biases = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    return k, rows, width, widths, kind, biases, draw(st.integers(0, 999))


def build_heads(k, width, widths, kind, biases):
    names = [f"t{i}" for i in range(k)]
    if kind == "columns":
        layer = nn.Linear(width, sum(widths))
        return pt.ColumnHeads(layer, dict(zip(names, widths, strict=True))).double()
    heads = {}
    for name, o, bias in zip(names, widths, biases, strict=True):
        first = nn.Linear(width, o, bias=bias)
        rest = nn.Sequential(nn.Tanh(), nn.Linear(o, 2))
        heads[name] = Then(first, rest) if kind == "deeper" else first
    return nn.ModuleDict(heads).double()


def task_losses(heads, leaves, names, y):
    per_task = dict(zip(names, leaves, strict=True))
    if isinstance(heads, pt.ColumnHeads):
        outputs = heads(per_task)
    else:
        outputs = {n: heads[n](leaf) for n, leaf in per_task.items()}
    return torch.stack([((outputs[n] - y) ** 2).mean() * (i + 1) for i, n in enumerate(names)])


@settings(max_examples=80, deadline=None)
@given(setup=heads_setups())
def test_closed_form_equals_the_formed_feature_gradients(setup):
    k, rows, width, widths, kind, biases, seed = setup
    torch.manual_seed(seed)
    heads = build_heads(k, width, widths, kind, biases)
    names = [f"t{i}" for i in range(k)]
    z = torch.randn(rows, width, dtype=torch.float64)
    leaves = [z.clone().requires_grad_() for _ in names]
    y = torch.randn(rows, 1, dtype=torch.float64)
    specific = list(heads.parameters())
    values = task_losses(heads, leaves, names, y)
    # the reference: one autograd.grad per task, then the products by hand
    per_task = [torch.autograd.grad(values[i], leaves[i], retain_graph=True)[0] for i in range(k)]
    flat = torch.stack(per_task).reshape(k, -1)
    head_grads = torch.autograd.grad(values.sum(), specific, retain_graph=True, allow_unused=True)

    found = _heads.read_linear_heads(values, leaves, specific, cheaper_only=False)
    assert found is not None
    assert found.widths == tuple(widths)
    delta, grads = _heads.head_deltas(found, values, specific, retain_graph=False)
    assert delta.shape == (rows, sum(widths))
    torch.testing.assert_close(_heads.closed_gramian(delta, found), flat @ flat.T)
    w = torch.rand(k, dtype=torch.float64) + 0.1
    seed_ref = torch.einsum("t,tij->ij", w, torch.stack(per_task))
    torch.testing.assert_close(_heads.closed_seed(delta, found, w), seed_ref)
    for got, ref in zip(grads, head_grads, strict=True):
        torch.testing.assert_close(got, ref)


def test_each_task_has_its_own_column_and_a_zero_gradient_gives_zeros():
    heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})
    z = torch.randn(4, 3)
    leaves = [z.clone().requires_grad_() for _ in range(2)]
    values = torch.stack([heads["a"](leaves[0]).sum(), heads["b"](leaves[1]).sum() * 0])
    found = _heads.read_linear_heads(values, leaves, list(heads.parameters()))
    assert found is not None
    delta, _ = _heads.head_deltas(found, values, list(heads.parameters()), retain_graph=False)
    assert torch.equal(delta[:, 0], torch.ones(4))
    assert torch.equal(delta[:, 1], torch.zeros(4))


class Reversed(nn.Module):
    """Gradient reversal by a hook on the head's input, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 1)

    def forward(self, z):
        if z.requires_grad:
            z.register_hook(lambda g: -0.5 * g)
        return self.layer(z)


def test_a_hook_on_a_heads_input_takes_the_general_path(monkeypatch):
    """The hook runs only when the gradient reaches the leaf, which the closed form skips:
    the update must be the formed path's (mgda@repr's weights moved from 0.15 to 0.43)."""
    found = []

    def spied(*args, **kwargs):
        found.append(_heads.read_linear_heads(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(_gradients, "read_linear_heads", spied)
    made = []
    for closed in (True, False):
        monkeypatch.setattr(_gradients.LeafGradients, "closed_form_heads", closed)
        found.clear()
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        model = pt.MultiTaskModel(trunk, {"main": nn.Linear(6, 1), "adv": Reversed()}).double()
        x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
        engine = pt.GradientEngine(model, "mgda@repr")
        out = engine.forward(x)
        step = engine.backward(
            {t: ((out[t][:, 0] - y[:, i]) ** 2).mean() for i, t in enumerate(("main", "adv"))}
        )
        assert found == ([None] if closed else [])  # read, and refused
        made.append((step.weights, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(made[0][0], made[1][0])
    for got, ref in zip(made[0][1], made[1][1], strict=True):
        torch.testing.assert_close(got, ref)


class ReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def forward(self, z):
        return self.layer(z) + z.sum(dim=1, keepdim=True)


@pytest.mark.parametrize(
    "make_head",
    [
        lambda: ReadTwice(),
        lambda: nn.Sequential(nn.Tanh(), nn.Linear(3, 1)),
        lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 1)).train(),
    ],
    ids=["leaf read twice", "starts with an activation", "dropout first"],
)
def test_heads_that_do_not_start_with_one_linear_layer_take_the_general_path(make_head):
    heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": make_head()})
    z = torch.randn(5, 3)
    leaves = [z.clone().requires_grad_() for _ in range(2)]
    values = torch.stack([heads[n](leaf).sum() for n, leaf in zip("ab", leaves, strict=True)])
    assert _heads.read_linear_heads(values, leaves, list(heads.parameters())) is None


def test_frozen_wide_autocast_or_unreadable_heads_take_the_general_path(monkeypatch):
    z = torch.randn(6, 4)
    leaves = [z.clone().requires_grad_() for _ in range(2)]

    def losses(heads):
        return torch.stack([heads[i](leaves[i]).pow(2).mean() for i in range(2)])

    frozen = [nn.Linear(4, 1), nn.Linear(4, 1).requires_grad_(False)]
    assert _heads.read_linear_heads(losses(frozen), leaves, list(frozen[0].parameters())) is None
    # a head the pass would not run (its parameters are not among those it computes)
    plain = [nn.Linear(4, 1), nn.Linear(4, 1)]
    assert _heads.read_linear_heads(losses(plain), leaves, list(plain[0].parameters())) is None
    # wide heads: O^2 (rows + width) above k^2 rows width, cheaper to form the gradients
    wide = [nn.Linear(4, 16), nn.Linear(4, 16)]
    params = [p for h in wide for p in h.parameters()]
    assert _heads.read_linear_heads(losses(wide), leaves, params) is None
    assert _heads.read_linear_heads(losses(wide), leaves, params, cheaper_only=False) is not None
    # autocast copies the leaf before the product
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = losses(plain)
    params = [p for h in plain for p in h.parameters()]
    assert _heads.read_linear_heads(cast, leaves, params) is None
    # a torch that does not expose the saved weight
    values = losses(plain)
    assert _heads.read_linear_heads(values, leaves, params) is not None
    monkeypatch.setattr(_chain, "_saved", lambda node, name: None)
    monkeypatch.setattr(_heads, "_saved", lambda node, name: None)
    assert _heads.read_linear_heads(values, leaves, params) is None


def model_and_batch(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU())
    if kind == "columns":
        heads = pt.ColumnHeads(nn.Linear(6, 4), {"a": 1, "b": 2, "c": 1})
    elif kind == "deeper":
        heads = {
            "a": nn.Linear(6, 1),
            "b": nn.Sequential(nn.Linear(6, 2, bias=False), nn.Tanh(), nn.Linear(2, 1)),
            "c": nn.Linear(6, 1),
        }
    else:
        heads = {"a": nn.Linear(6, 1), "b": nn.Linear(6, 1, bias=False), "c": nn.Linear(6, 1)}
    model = pt.MultiTaskModel(trunk, heads).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randn(16, 1, dtype=torch.float64)
    return model, x, y


def one_step(kind, method, closed, monkeypatch, present=("a", "b", "c")):
    monkeypatch.setattr(_gradients.LeafGradients, "closed_form_heads", closed)
    calls = []
    original = _heads.head_deltas

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_gradients, "head_deltas", counted)
    model, x, y = model_and_batch(kind)
    engine = pt.GradientEngine(model, method)
    outputs = engine.forward(x)
    losses = {t: ((outputs[t] - y) ** 2).mean() * (i + 1) for i, t in enumerate(present)}
    step = engine.backward(losses)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return grads, step.weights, len(calls)


@pytest.mark.parametrize("kind", ["linear", "columns", "deeper"])
@pytest.mark.parametrize("method", ["upgrad@repr", "mgda@repr", "cagrad@repr", "nashmtl@repr"])
def test_the_engine_update_is_the_same_with_and_without_the_closed_form(kind, method, monkeypatch):
    closed, closed_weights, used = one_step(kind, method, True, monkeypatch)
    formed, formed_weights, unused = one_step(kind, method, False, monkeypatch)
    assert (used, unused) == (1, 0)  # the closed form ran, then the general path
    torch.testing.assert_close(closed_weights, formed_weights)
    for got, ref in zip(closed, formed, strict=True):
        torch.testing.assert_close(got, ref)


def test_a_step_with_a_task_missing_keeps_the_present_tasks_columns(monkeypatch):
    closed, weights, used = one_step("linear", "upgrad@repr", True, monkeypatch, ("a", "c"))
    formed, ref_weights, _ = one_step("linear", "upgrad@repr", False, monkeypatch, ("a", "c"))
    assert used == 1 and weights[1] == 0
    torch.testing.assert_close(weights, ref_weights)
    assert [g is None for g in closed] == [g is None for g in formed]
    assert any(g is None for g in closed)  # the absent task's head has no gradient
    for got, ref in zip(closed, formed, strict=True):
        if got is not None:
            torch.testing.assert_close(got, ref)


def test_feature_gradients_asked_after_the_closed_form_are_the_formed_ones(monkeypatch):
    """A method that reads the Gramian and then the feature gradients (the last layer's norms)
    gets ``delta_t W_t``, the gradients the general path forms."""
    model, x, y = model_and_batch("columns")
    engine = pt.GradientEngine(model, "upgrad@repr")
    outputs = engine.forward(x)
    values = torch.stack([((outputs[t] - y) ** 2).mean() for t in model.task_names])
    features = engine._pending
    made = []
    for closed in (True, False):
        monkeypatch.setattr(_gradients.LeafGradients, "closed_form_heads", closed)
        view = _gradients.LeafGradients(
            values,
            list(model.shared_parameters()),
            list(model.heads.parameters()),
            lambda w: w,
            lambda: [],
            features=features,
            names=list(model.task_names),
            owners=None,
            representation=True,
        )
        gram = view.gramian()
        assert (view._delta is not None) == closed  # the first view took the closed form
        made.append((gram, view._leaf_pass()))
    torch.testing.assert_close(made[0][0], made[1][0])
    torch.testing.assert_close(made[0][1], made[1][1])
