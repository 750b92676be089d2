"""Nash-MTL as its authors' code trains: the losses weighted by the bargaining solution ``a``
(heads included), and only the shared parameters' gradient clipped to ``max_norm``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polytask as pt

TASKS = ["a", "b", "c"]


def _model():
    torch.manual_seed(0)
    return pt.MultiTaskModel(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh()), {t: nn.Linear(8, 1) for t in TASKS}
    )


def _batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(40, 4, generator=g), torch.randn(40, 3, generator=g)


def _losses(outputs, y):
    return {t: ((outputs[t].squeeze(-1) - y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)}


def _reference_grads(model, x, y, alpha: torch.Tensor, max_norm: float) -> dict[str, torch.Tensor]:
    """The authors' backward: sum_t a_t L_t, then clip_grad_norm_ on the shared parameters."""
    model.zero_grad()
    losses = _losses(model(x), y)
    sum(a * losses[t] for a, t in zip(alpha, TASKS, strict=True)).backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(model.trunk.parameters()), max_norm)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("path", ["exact", "naive"])
@pytest.mark.parametrize("max_norm", [1.0, 0.05, 0.0])
def test_nashmtl_clips_the_shared_update_only(path, max_norm):
    model = _model()
    x, y = _batch()
    engine = pt.GradientEngine(model, pt.NashMTL(max_norm=max_norm), path=path)
    step = engine.backward(_losses(engine.forward(x), y))
    alpha = step.weights.detach()
    # a is the bargaining solution on the shared parameters' Gramian: (G a)_t a_t = 1
    losses = _losses(model(x), y)
    rows = []
    for t in TASKS:
        grads = torch.autograd.grad(losses[t], list(model.trunk.parameters()), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jacobian = torch.stack(rows).double()
    gram = jacobian @ jacobian.T
    torch.testing.assert_close(
        (gram @ alpha.double()) * alpha.double(), torch.ones(3).double(), rtol=1e-3, atol=1e-3
    )
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    expected = _reference_grads(model, x, y, alpha, max_norm)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    shared_norm = torch.cat([got[n].reshape(-1) for n in got if n.startswith("trunk")]).norm()
    if max_norm > 0:  # with exact solves |J^T a| = sqrt(T) > max_norm: the clip is active
        assert shared_norm == pytest.approx(max_norm, rel=1e-3)


@pytest.mark.parametrize("path", ["representation", "exact"])
def test_nashmtl_clipping_never_touches_the_heads(path):
    """Every path: each head's gradient is a_t times its task's own with a unclipped, so the
    heads train alike with and without clipping (they took the clipped weights, 1/sqrt(T) as
    large at the default max_norm, before)."""
    x, y = _batch()
    heads = {}
    for max_norm in (1.0, 0.0):
        model = _model()
        engine = pt.GradientEngine(model, pt.NashMTL(max_norm=max_norm), path=path)
        step = engine.backward(_losses(engine.forward(x), y))
        heads[max_norm] = [p.grad.clone() for p in model.heads.parameters()]
        alpha = step.weights.detach()
        model.zero_grad()
        losses = _losses(model(x), y)
        for i, t in enumerate(TASKS):
            head = list(model.heads[t].parameters())
            own = torch.autograd.grad(losses[t], head, retain_graph=True)
            start = 2 * i
            for got, grad in zip(heads[max_norm][start : start + 2], own, strict=True):
                torch.testing.assert_close(got, alpha[i] * grad, rtol=1e-4, atol=1e-7)
    for clipped, unclipped in zip(heads[1.0], heads[0.0], strict=True):
        torch.testing.assert_close(clipped, unclipped, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("path", ["exact", "representation"])
def test_nashmtl_on_a_step_with_some_tasks(path):
    """A step that holds two of the three tasks (a max_size schedule, missing labels): the
    solve runs on the present tasks, the absent one gets weight 0 and its head no gradient."""
    model = _model()
    x, y = _batch()
    engine = pt.GradientEngine(model, pt.NashMTL(update_weights_every=2), path=path)
    for _ in range(3):  # a fresh solve, a reused one, a fresh one
        model.zero_grad()
        losses = _losses(engine.forward(x), y)
        step = engine.backward({t: losses[t] for t in ("a", "c")})
        assert step.weights[1] == 0 and bool((step.weights[[0, 2]] > 0).all())
        assert all(p.grad is None or not p.grad.any() for p in model.heads["b"].parameters())
