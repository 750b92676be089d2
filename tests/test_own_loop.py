"""The engine in a user's own loop: the mistakes that would train wrongly without a word are
refused, and the loop the README shows matches the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polytask as pt


def make_model(seed: int = 0) -> pt.MultiTaskModel:
    torch.manual_seed(seed)
    heads = {t: nn.Linear(8, 1) for t in ("a", "b", "c")}
    return pt.MultiTaskModel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)), heads)


X = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
Y = {t: torch.randn(16, generator=torch.Generator().manual_seed(i)) for i, t in enumerate("abc")}


def task_losses(outputs):
    return {t: ((outputs[t][:, 0] - Y[t]) ** 2).mean() for t in "abc"}


def recompute(model):
    return lambda: torch.stack(list(task_losses(model(X)).values()))


@pytest.mark.parametrize("method", ["famo", "gradnorm"])
def test_a_method_that_learns_after_the_step_refuses_a_loop_without_after_step(method):
    model = make_model()
    engine = pt.GradientEngine(model, method)
    optimizer = torch.optim.SGD([*model.parameters(), *engine.parameters()], lr=0.01)
    engine.backward(task_losses(engine.forward(X)))
    optimizer.step()
    with pytest.raises(RuntimeError, match=r"call engine\.after_step\(recompute\) after"):
        engine.backward(task_losses(engine.forward(X)))
    engine = pt.GradientEngine(make_model(), "upgrad")  # a method without it: no call needed
    for _ in range(2):
        engine.backward(task_losses(engine.forward(X)))


@pytest.mark.parametrize("method", ["famo", "gradnorm", "dwa", "uw"])
def test_the_readme_loop_matches_the_trainer(method):
    """One batch per epoch, the whole data: the trainer's steps are the loop's."""
    data = pt.MultiTargetData(X, Y)
    model = make_model()
    trainer = pt.Trainer(method, lr=0.01, batch_size=16, max_epochs=4, patience=None, quiet=True)
    trainer.fit(model, [pt.Task(t) for t in "abc"], data, data)
    own = make_model()
    engine = pt.GradientEngine(own, method)
    engine.objective.bind_tasks([pt.Task(t) for t in "abc"])
    optimizer = torch.optim.Adam([*own.parameters(), *engine.parameters()], lr=0.01)
    for _ in range(4):
        outputs = engine.forward(X)
        optimizer.zero_grad()
        engine.backward(task_losses(outputs))
        optimizer.step()
        engine.after_step(recompute(own))
        engine.end_epoch()
    for (name, got), want in zip(own.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["upgrad", "mgda@repr"])
def test_a_second_forward_before_backward_is_refused(method):
    engine = pt.GradientEngine(make_model(), method)
    outputs = engine.forward(X)
    with torch.no_grad():
        engine.forward(X)  # a logging pass: no features kept, nothing refused
    with pytest.raises(RuntimeError, match=r"engine\.forward was called again before backward"):
        engine.forward(X)
    engine.backward(task_losses(outputs))  # the first forward's step still goes through
    engine.forward(X)  # and a new step may start


def test_parameters_unfrozen_after_a_step_train_again():
    model = make_model()
    engine = pt.GradientEngine(model, "upgrad")
    model.trunk[0].requires_grad_(False)
    engine.backward(task_losses(engine.forward(X)))
    assert model.trunk[0].weight.grad is None
    model.zero_grad()
    model.trunk[0].requires_grad_(True)
    engine.backward(task_losses(engine.forward(X)))
    # the same gradient as a new engine, which reads the trainable parameters afresh
    got = model.trunk[0].weight.grad.clone()
    model.zero_grad()
    fresh = pt.GradientEngine(model, "upgrad")
    fresh.backward(task_losses(fresh.forward(X)))
    torch.testing.assert_close(got, model.trunk[0].weight.grad)


@pytest.mark.parametrize("method", ["upgrad", "upgrad@repr", "mgda", "imtl"])
def test_backward_under_autocast_computes_as_outside(method):
    """Lightning's bf16-mixed runs the whole training step under autocast."""
    weights = []
    for inside in (False, True):
        model = make_model()
        engine = pt.GradientEngine(model, method)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = task_losses(engine.forward(X))
            if inside:
                step = engine.backward(losses)
        if not inside:
            step = engine.backward(losses)
        weights.append(step.weights)
    assert weights[0].dtype == torch.float32
    torch.testing.assert_close(weights[1], weights[0])


def test_structured_terms_must_be_passed_in_an_own_loop():
    model = make_model()
    engine = pt.GradientEngine(model, pt.make_objective("upgrad") + pt.Consistency([("a", "b")]))
    with pytest.raises(ValueError, match=r"structured terms \['consistency'\]: pass terms="):
        engine.backward(task_losses(engine.forward(X)))


@pytest.mark.parametrize("method", ["nashmtl", "dbmtl", "upgrad"])
def test_a_grad_scaler_given_as_scale_leaves_the_update_unchanged(method):
    def grads(model):
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    model = make_model()
    engine = pt.GradientEngine(model, method)
    engine.backward(task_losses(engine.forward(X)))
    reference = grads(model)
    model = make_model()
    engine = pt.GradientEngine(model, method)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    engine.backward(task_losses(engine.forward(X)), scale=scaler)
    torch.testing.assert_close(grads(model), reference * 2.0**10)  # scaled, for the scaler
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
    torch.testing.assert_close(grads(model), reference)
