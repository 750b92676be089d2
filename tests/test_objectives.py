"""Loss combiners: against independent numpy computations, torchjd, and defining properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torchjd import scalarization

import polytask as pt

positive_losses = arrays(
    np.float64,
    st.integers(1, 8),
    elements=st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
)


def bound(objective, n):
    objective.bind([f"t{i}" for i in range(n)])
    return objective


def weights_by_autograd(objective, losses):
    leaf = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective.combine(leaf), leaf)
    return grad


@settings(max_examples=60, deadline=None)
@given(values=positive_losses)
def test_combiners_match_numpy(values):
    losses = torch.tensor(values)
    n = len(values)
    w = np.linspace(0.5, 2.0, n)
    expected = {
        pt.Sum: values.sum(),
        pt.Mean: values.mean(),
        pt.GeometricMean: np.exp(np.log(values).mean()),
    }
    for cls, value in expected.items():
        got = float(bound(cls(), n).value(losses))
        assert math.isclose(got, value, rel_tol=1e-9), cls
    weighted = float(bound(pt.Weighted(list(w)), n).value(losses))
    assert math.isclose(weighted, float(w @ values), rel_tol=1e-6)  # float32 weights


@settings(max_examples=60, deadline=None)
@given(values=positive_losses)
def test_effective_weights_are_the_gradient_and_reproduce_the_value(values):
    """Each closed-form weight is d value / d loss_t; the degree-1 homogeneous combiners also
    satisfy Euler's identity sum_t w_t * loss_t = value."""
    losses = torch.tensor(values)
    n = len(values)
    for objective in (pt.Sum(), pt.Mean(), pt.Weighted([1.5] * n), pt.GeometricMean()):
        objective = bound(objective, n)
        value = objective.value(losses)
        weights = objective.weights(losses, value)
        torch.testing.assert_close(weights, weights_by_autograd(objective, losses))
        assert math.isclose(float(weights @ losses), float(value), rel_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(values=positive_losses, scale=st.floats(1e-3, 1e3))
def test_geometric_mean_is_scale_equivariant_and_matches_torchjd(values, scale):
    losses = torch.tensor(values)
    objective = bound(pt.GeometricMean(), len(values))
    reference = scalarization.GeometricMean()(losses)
    torch.testing.assert_close(objective.value(losses), reference)
    assert math.isclose(
        float(objective.value(losses * scale)), scale * float(reference), rel_tol=1e-9
    )


def test_geometric_mean_is_the_closed_form_heteroscedastic_loss(rng):
    """exp(mean_t(log(mean_batch((y_pred - y_true)^2)))) computed in numpy from raw arrays."""
    y_pred, y_true = rng.normal(size=(64, 5)), rng.normal(size=(64, 5))
    expected = np.exp(np.mean(np.log(np.mean((y_pred - y_true) ** 2, axis=0))))
    mse = ((torch.tensor(y_pred) - torch.tensor(y_true)) ** 2).mean(0)
    assert math.isclose(float(bound(pt.GeometricMean(), 5).value(mse)), expected, rel_tol=1e-12)


def test_geometric_mean_is_safe_when_a_task_loss_is_zero():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # column 0 is predicted exactly
    mse = ((pred - target) ** 2).mean(0)
    objective = bound(pt.GeometricMean(), 2)
    step = objective.backward(mse)
    assert torch.isfinite(pred.grad).all()
    assert torch.isfinite(step.value) and torch.isfinite(step.weights).all()
    assert float(step.weights[0]) == 0.0 and float(step.weights[1]) > 0.0


def test_backward_accumulates_the_gradient_of_the_combined_loss():
    params = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    losses = torch.stack([(params[0] - 1) ** 2, params[1] ** 2 + 0.1, (params[2] * params[0]) ** 2])
    objective = bound(pt.GeometricMean(), 3)
    (expected,) = torch.autograd.grad(objective.combine(losses), params, retain_graph=True)
    step = objective.backward(losses)
    torch.testing.assert_close(params.grad, expected)
    torch.testing.assert_close(step.value, objective.combine(losses.detach()))


def test_uncertainty_matches_kendall_formula_and_learns(rng):
    objective = bound(pt.Uncertainty(), 3)
    with torch.no_grad():
        objective.log_variances.copy_(torch.tensor([0.0, 1.0, -0.5]))
    losses = torch.tensor([2.0, 3.0, 0.5])
    s = np.array([0.0, 1.0, -0.5])
    expected = np.sum(0.5 * np.exp(-s) * losses.numpy() + 0.5 * s)
    assert math.isclose(float(objective.combine(losses).detach()), expected, rel_tol=1e-6)
    assert float(objective.value(losses)) == pytest.approx(float(losses.mean()))  # stop criterion
    torch.testing.assert_close(
        objective.weights(losses, objective.combine(losses)),
        weights_by_autograd(objective, losses),
    )
    # d/ds of 0.5 e^{-s} L + 0.5 s is zero at s = log L: the learned variance tracks the loss
    step = objective.backward(losses)
    assert step.weights.shape == (3,)
    grad = objective.log_variances.grad
    expected_grad = -0.5 * np.exp(-s) * losses.numpy() + 0.5
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float32))


def test_uncertainty_parameters_are_trained_by_the_trainer(hetero_splits):
    from conftest import small_model

    train, stop, _ = hetero_splits
    objective = pt.Uncertainty()
    trainer = pt.Trainer(objective, max_epochs=3, patience=None, quiet=True, lr=1e-2)
    trainer.fit(small_model(), pt.regression_tasks(["task0", "task1", "task2"]), train, stop)
    assert not torch.equal(objective.log_variances.detach(), torch.zeros(3))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, -1.0], "non-negative"),
        ([1.0, float("nan")], "finite"),
        ([1.0, float("inf")], "finite"),
        ([], "non-negative"),
    ],
)
def test_weighted_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        pt.Weighted(weights)


def test_weighted_checks_weights_against_the_tasks():
    with pytest.raises(ValueError, match=r"2 weights given for 3 tasks"):
        bound(pt.Weighted([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match=r"weights given for tasks \['a', 'x'\]"):
        pt.Weighted({"a": 1.0, "x": 2.0}).bind(["a", "b"])
    objective = pt.Weighted({"b": 3.0, "a": 1.0})
    objective.bind(["a", "b"])
    assert float(objective.value(torch.tensor([1.0, 1.0]))) == 4.0
    assert objective.weights(torch.ones(2), torch.tensor(4.0)).tolist() == [1.0, 3.0]


def test_losses_given_as_a_mapping_follow_the_bound_order():
    objective = pt.Weighted([1.0, 10.0])
    objective.bind(["a", "b"])
    assert float(objective.value({"b": torch.tensor(1.0), "a": torch.tensor(2.0)})) == 12.0
    with pytest.raises(KeyError, match=r"no loss for tasks \['b'\]"):
        objective.value({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        objective.value(torch.ones(3))


def test_cli_names():
    assert type(pt.make_objective("mse")) is pt.Mean
    assert type(pt.make_objective("mean")) is pt.Mean
    assert type(pt.make_objective("sum")) is pt.Sum
    assert type(pt.make_objective("geometric")) is pt.GeometricMean
    assert type(pt.make_objective("uncertainty")) is pt.Uncertainty
    weighted = pt.make_objective("weighted:1:2.5")
    weighted.bind(["a", "b"])
    assert float(weighted.value(torch.tensor([1.0, 2.0]))) == 6.0
    with pytest.raises(ValueError, match=r"unknown method 'pcgradx'.*geometric"):
        pt.make_objective("pcgradx")
    with pytest.raises(ValueError, match="needs its weights"):
        pt.make_objective("weighted")


@settings(max_examples=40, deadline=None)
@given(values=arrays(np.float64, 3, elements=st.floats(1e-3, 1e3)))
def test_imtl_l_is_stationary_where_scaled_losses_equal_one(values):
    """IMTL-L's defining property: d/ds (e^s L - s) = 0 exactly where e^s L = 1, i.e. every
    scaled loss is 1 (the tasks are balanced)."""
    objective = bound(pt.objectives.IMTLL(), 3)
    with torch.no_grad():
        objective.scalarizer.log_scale.copy_(torch.tensor(-np.log(values), dtype=torch.float32))
    objective.combine(torch.tensor(values, dtype=torch.float32)).backward()
    torch.testing.assert_close(
        objective.scalarizer.log_scale.grad, torch.zeros(3), atol=1e-4, rtol=0
    )


def test_rlw_draws_positive_weights_summing_to_one_and_reports_those_it_applied():
    objective = bound(pt.objectives.RLW(), 4)
    draws = []
    for _ in range(2):
        losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
        step = objective.backward(losses)
        torch.testing.assert_close(losses.grad, step.weights)  # the weights of this very step
        assert (step.weights > 0).all() and float(step.weights.sum()) == pytest.approx(1.0)
        draws.append(step.weights)
    assert not torch.equal(draws[0], draws[1])  # a fresh draw each step


def test_rlw_draws_from_its_own_stream_whatever_the_dropout_draws():
    """RLW's weights come from a generator seeded by the fit, not the global RNG: a model with
    dropout (which draws from the global RNG every step) gets the same weights as one without,
    under one seed, and the caller's RNG is not advanced by the fit."""
    data = pt.make_hetero(64, 2, seed=0)
    tasks = pt.regression_tasks(["task0", "task1"])

    def weights(dropout: float):
        trunk = torch.nn.Sequential(pt.mlp(1, 8, 2, seed=0), torch.nn.Dropout(dropout))
        model = pt.MultiTaskModel(trunk, {t.name: torch.nn.Linear(8, 1) for t in tasks})
        trainer = pt.Trainer("rlw", batch_size=16, max_epochs=2, patience=None, quiet=True)
        before = torch.random.get_rng_state()
        history = trainer.fit(model, tasks, data, data).to_frame()
        assert torch.equal(torch.random.get_rng_state(), before)
        return history[["weight/task0", "weight/task1"]].to_numpy()

    plain, masked = weights(0.0), weights(0.5)
    np.testing.assert_array_equal(plain, masked)
    assert len(np.unique(plain[:, 0])) == len(plain)  # a fresh draw every epoch's mean


def test_dwa_weights_by_hand():
    """Uniform for two epochs, then K * softmax(r / T) with r = L(t-1) / L(t-2)."""
    objective = bound(pt.objectives.DWA(temperature=2.0), 2)
    epochs = [torch.tensor([4.0, 2.0]), torch.tensor([2.0, 2.0])]
    for losses in epochs:
        assert objective.weights(losses, None).tolist() == [1.0, 1.0]
        objective.combine(losses)
        objective.end_epoch()
    ratio = np.array([2.0 / 4.0, 2.0 / 2.0])
    expected = 2 * np.exp(ratio / 2) / np.exp(ratio / 2).sum()
    np.testing.assert_allclose(objective.weights(torch.ones(2), None).numpy(), expected, rtol=1e-6)


def _task_losses(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T losses that share ``params`` through a nonlinear trunk, so every task's gradient
    reaches every parameter along a different path."""
    hidden = torch.tanh(x @ params[:-1])
    return (hidden * params[-1] - x.sum(1, keepdim=True)).pow(2).mean(0) + params.square().sum()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 7),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.data(),
)
def test_linear_combiners_backward_is_the_gradient_of_the_combined_loss_bit_for_bit(
    seed, n, dtype, data
):
    """Sum, Mean and Weighted backpropagate their weights straight into the loss vector; the
    parameter gradients equal autograd's gradient of the combined loss exactly, with or without
    absent tasks."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=generator, dtype=dtype)
    start = torch.randn(4, n, generator=generator, dtype=dtype)
    present = data.draw(st.sets(st.integers(0, n - 1), min_size=1))
    positions = None if len(present) == n else tuple(sorted(present))
    weights = [float(w) for w in torch.rand(n, generator=generator) + 0.1]
    for objective in (pt.Sum(), pt.Mean(), pt.Weighted(weights)):
        objective = bound(objective, n)
        assert objective.linear
        params = start.clone().requires_grad_(True)
        losses = _task_losses(params, x)
        losses = losses if positions is None else losses[list(positions)]
        combined = objective.combine(losses, positions)
        (expected,) = torch.autograd.grad(combined, params, retain_graph=True)
        step = objective.backward(losses, positions)
        assert torch.equal(params.grad, expected), type(objective).__name__
        assert torch.equal(step.value, combined.detach())
        present_weights = step.weights[list(present)]
        assert torch.equal(present_weights, objective.weights(losses.detach(), combined, positions))
        absent = [t for t in range(n) if t not in present]
        assert not step.weights[absent].any()


def test_a_subclass_that_changes_the_combination_is_not_linear_unless_it_says_so():
    class Squared(pt.Sum):
        def combine(self, losses, positions=None):
            return losses.square().sum()

    class Declared(pt.Sum):
        linear = True

        def weights(self, losses, value, positions=None):
            return torch.ones_like(losses)

    class Mix:  # a mixin's combine comes first in the method resolution order
        def combine(self, losses, positions=None):
            return losses.square().sum()

    class MixSum(Mix, pt.Sum):
        pass

    class GeometricSum(pt.Sum):  # the same combine, another scalarizer
        def _on_bind(self):
            self.scalarizer = scalarization.GeometricMean()

    class Again(Declared):  # inherits a declaration it does not change
        pass

    assert pt.Sum.linear and not Squared.linear and Declared.linear and Again.linear
    assert not MixSum.linear and not GeometricSum.linear
    for cls in (MixSum, GeometricSum):
        params = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
        losses = params * torch.tensor([1.0, 2.0, 3.0])
        objective = bound(cls(), 3)
        (expected,) = torch.autograd.grad(objective.combine(losses), params, retain_graph=True)
        objective.backward(losses)
        torch.testing.assert_close(params.grad, expected)
    params = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    losses = params * torch.tensor([1.0, 2.0, 3.0])
    objective = bound(Squared(), 3)
    (expected,) = torch.autograd.grad(objective.combine(losses), params, retain_graph=True)
    objective.backward(losses)
    torch.testing.assert_close(params.grad, expected)  # 2 * loss_t * c_t, not c_t
    assert not torch.equal(expected, torch.tensor([1.0, 2.0, 3.0]))


def test_a_linear_combiner_with_a_penalty_backpropagates_both():
    params = torch.tensor([0.5, -1.0], requires_grad=True)
    losses = params.square()
    penalty = 3.0 * params.sum()
    objective = bound(pt.Mean(), 2)
    step = objective.backward(losses, penalty=penalty)
    torch.testing.assert_close(params.grad, params.detach() + 3.0)
    torch.testing.assert_close(step.value, losses.detach().mean() + penalty.detach())
