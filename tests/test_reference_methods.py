"""Stateful gradient methods against independent re-implementations of their references, over
several optimizer steps (the first step alone hides the state: an EMA equal to its first
gradient, loss ratios all equal to 1).

Each reference below is plain torch: one ``autograd.grad`` per task, the published formulas, no
polytask code on the path.
"""

import copy

import pytest
import torch
from torch import nn

import polytask as pt
from polytask.objectives import DBMTL, GradNorm

TASKS = ("t0", "t1", "t2")


def small_problem(seed=0):
    """Three regression tasks of very different scales and speeds on a two-layer trunk (float64,
    so the comparisons can be tight)."""
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
    model = pt.MultiTaskModel(trunk, {t: nn.Linear(5, 1) for t in TASKS}).double()
    x = torch.randn(24, 4, dtype=torch.float64)
    y = torch.randn(24, 3, dtype=torch.float64)
    y[:, 0] = 5 * x[:, 0] + 0.3 * y[:, 0]  # a large, easily learnt task
    y[:, 1] = -3 * x[:, 0] * x[:, 1]  # conflicts with task 0 on the trunk
    y[:, 2] = 0.2 * y[:, 2]  # small, noise
    return model, x, y


def task_losses(outputs, y):
    return {t: ((outputs[t][:, 0] - y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)}


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


# --- DB-MTL ----------------------------------------------------------------------------------
def reference_dbmtl(model, x, y, steps, lr, beta, beta_sigma):
    """LibMTL's DB_MTL (median-research-group/LibMTL, ``LibMTL/weighting/DB_MTL.py``) written
    out: per task the gradient ``g_t`` of ``log(L_t + 1e-8)`` on the shared parameters, the
    buffer ``b <- g + beta / step**beta_sigma * (b - g)`` from zeros (no bias correction),
    ``alpha_t = max_s |b_s| / (|b_t| + 1e-8)`` with ``|.|`` the L2 norm of a task's whole
    shared gradient, shared update ``sum_t alpha_t b_t``; every other parameter gets the plain
    gradient of ``sum_t log(L_t + 1e-8)`` (LibMTL backpropagates each log-loss in turn and
    resets only the shared gradients). Plain SGD. Returns each step's shared and head
    gradients."""
    shared = list(model.shared_parameters())
    heads = [p for p in model.parameters() if all(p is not s for s in shared)]
    buffer = torch.zeros(len(TASKS), sum(p.numel() for p in shared), dtype=torch.float64)
    record = []
    for step in range(1, steps + 1):
        losses = task_losses(model(x), y)
        logs = [torch.log(losses[t] + 1e-8) for t in TASKS]
        g = torch.stack([flat(torch.autograd.grad(v, shared, retain_graph=True)) for v in logs])
        head_grads = torch.autograd.grad(sum(logs), heads)
        buffer = g + beta / step**beta_sigma * (buffer - g)
        norms = buffer.norm(dim=-1)
        alpha = norms.max() / (norms + 1e-8)
        update = (alpha[:, None] * buffer).sum(0)
        record.append((update, flat(head_grads)))
        with torch.no_grad():
            offset = 0
            for p in shared:
                p -= lr * update[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            for p, grad in zip(heads, head_grads, strict=True):
                p -= lr * grad
    return record


def polytask_dbmtl(model, x, y, steps, lr, objective, split):
    engine = pt.GradientEngine(model, objective)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    shared = list(model.shared_parameters())
    heads = [p for p in model.parameters() if all(p is not s for s in shared)]
    record = []
    for _ in range(steps):
        optimizer.zero_grad()
        outputs = engine.forward(x) if split else model(x)  # per-task leaves, or plain z
        engine.backward(task_losses(outputs, y))
        record.append((flat([p.grad for p in shared]), flat([p.grad for p in heads])))
        optimizer.step()
    return record


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize(("beta", "beta_sigma"), [(None, None), (0.6, 0.5)])
def test_dbmtl_equals_the_libmtl_reference_over_several_steps(beta, beta_sigma, split):
    """Four SGD steps: the shared update (EMA of the log-loss gradients, rescaled to the
    largest task's norm) and the heads' gradients match LibMTL's formulas at every step, with
    the reference defaults (beta 0.9, beta_sigma 0) and with a decaying rate."""
    model, x, y = small_problem()
    reference_model = copy.deepcopy(model)
    if beta is None:
        objective, beta, beta_sigma = DBMTL(), 0.9, 0.0  # LibMTL's DB_beta, DB_beta_sigma
    else:
        objective = DBMTL(beta=beta, beta_sigma=beta_sigma)
    ours = polytask_dbmtl(model, x, y, 4, 0.05, objective, split)
    expected = reference_dbmtl(reference_model, x, y, 4, 0.05, beta, beta_sigma)
    for step, ((shared, heads), (shared_ref, heads_ref)) in enumerate(
        zip(ours, expected, strict=True), start=1
    ):
        torch.testing.assert_close(shared, shared_ref, rtol=1e-9, atol=1e-12, msg=f"step {step}")
        torch.testing.assert_close(heads, heads_ref, rtol=1e-9, atol=1e-12, msg=f"step {step}")


def test_dbmtl_hyperparameters_are_libmtls_and_are_shown():
    objective = DBMTL()
    assert (objective.beta, objective.beta_sigma) == (0.9, 0.0)
    assert "beta=0.9" in repr(objective) and "beta_sigma=0.0" in repr(objective)
    assert "beta_sigma=0.5" in repr(DBMTL(beta_sigma=0.5))
    with pytest.raises(ValueError, match="DBMTL: beta must be in"):
        DBMTL(beta=1.0)
    with pytest.raises(ValueError, match="DBMTL: beta_sigma must be"):
        DBMTL(beta_sigma=-0.1)


# --- GradNorm --------------------------------------------------------------------------------
def reference_gradnorm(model, x, y, steps, lr, alpha):
    """GradNorm (Chen et al., ICML 2018, Algorithm 1) written out. ``W`` is the last shared
    layer (weight and bias); ``G_t = |grad_W (w_t L_t)|``, one ``autograd.grad`` per task;
    ``r_t = (L_t / L_t(0)) / mean_s (L_s / L_s(0))`` with ``L(0)`` the first step's losses;
    ``L_grad = sum_t |G_t - mean(G) * r_t ** alpha|`` with the target held constant; the network
    descends ``sum_t w_t L_t``, the weights descend ``L_grad`` (same SGD step), then are
    renormalised to sum to T. Returns each step's task weights (after renormalisation) and
    shared gradients."""
    last = list(model.trunk[2].parameters())
    shared = list(model.shared_parameters())
    params = list(model.parameters())
    w = torch.ones(len(TASKS), dtype=torch.float64, requires_grad=True)
    initial = None
    record = []
    for _ in range(steps):
        outputs = model(x)
        losses = torch.stack([task_losses(outputs, y)[t] for t in TASKS])
        if initial is None:
            initial = losses.detach()
        G = torch.stack(
            [
                flat(torch.autograd.grad(w[t] * losses[t], last, create_graph=True)).norm()
                for t in range(len(TASKS))
            ]
        )
        inverse_rate = (losses.detach() / initial) / (losses.detach() / initial).mean()
        target = (G.mean() * inverse_rate**alpha).detach()
        (w_grad,) = torch.autograd.grad((G - target).abs().sum(), w)
        grads = torch.autograd.grad((w.detach() * losses).sum(), params)
        record.append(
            (
                None,
                flat(
                    [g for g, p in zip(grads, params, strict=True) if any(p is s for s in shared)]
                ),
            )
        )
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
            w -= lr * w_grad
            w *= len(TASKS) / w.sum()
        record[-1] = (w.detach().clone(), record[-1][1])
    return record


def polytask_gradnorm(model, x, y, steps, lr, alpha, split):
    objective = GradNorm(alpha=alpha)
    engine = pt.GradientEngine(model, objective)
    optimizer = torch.optim.SGD([*model.parameters(), *engine.parameters()], lr=lr)
    shared = list(model.shared_parameters())
    record = []
    for _ in range(steps):
        optimizer.zero_grad()
        outputs = engine.forward(x) if split else model(x)
        engine.backward(task_losses(outputs, y))
        grad = flat([p.grad for p in shared])
        optimizer.step()
        engine.after_step(lambda: None)  # GradNorm renormalises here; it recomputes nothing
        record.append((objective.task_weights.detach().clone(), grad))
    return record


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("alpha", [0.5, 1.5, 3.0])
def test_gradnorm_equals_the_papers_update_over_several_steps(alpha, split):
    """Eight SGD steps in which the tasks train at different speeds, so the loss ratios move
    away from 1 and alpha decides the targets: the task weights and the shared update agree
    with the paper's algorithm at every step (to float32, the precision of the learned
    weights)."""
    model, x, y = small_problem()
    reference_model = copy.deepcopy(model)
    ours = polytask_gradnorm(model, x, y, 8, 0.05, alpha, split)
    expected = reference_gradnorm(reference_model, x, y, 8, 0.05, alpha)
    for step, ((w, shared), (w_ref, shared_ref)) in enumerate(
        zip(ours, expected, strict=True), start=1
    ):
        torch.testing.assert_close(w.double(), w_ref, rtol=1e-5, atol=1e-8, msg=f"step {step}")
        torch.testing.assert_close(shared, shared_ref, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    assert abs(float(ours[-1][0].sum()) - 3.0) < 1e-9
