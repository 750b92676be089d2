"""The method zoo: defining properties on random Jacobians, agreement with torchjd, the three
gradient paths, and the methods inside real fits."""

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn
from torchjd import aggregation
from torchjd.linalg import QuadprogProjector

import polytask as pt
from polytask.engine import gramian, task_jacobian
from polytask.objectives import OBJECTIVES, make_objective
from polytask.objectives._gradient import shuffle_seed

jacobians = st.tuples(st.integers(2, 5), st.integers(3, 8)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(-3, 3, width=64))
)


def weights_of(cls_or_name, J):
    objective = make_objective(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
    objective.bind([f"t{i}" for i in range(len(J))])
    G = torch.tensor(J @ J.T)
    return objective.weights_from_gramian(G).double().numpy()


def nondegenerate(J):
    return np.linalg.norm(J, axis=1).min() > 1e-2


@settings(max_examples=60, deadline=None)
@given(J=jacobians)
def test_upgrad_never_conflicts_with_a_task(J):
    assume(nondegenerate(J))
    # torchjd regularises the Gramian (reg_eps, 1e-4 by default) before its quadratic programs;
    # the property holds up to that regularisation, so check it with a small one
    projector = QuadprogProjector(reg_eps=1e-8)
    d = weights_of(pt.objectives.UPGrad(projector=projector), J) @ J
    scale = np.linalg.norm(J, axis=1).max() ** 2
    assert (J @ d >= -1e-5 * scale).all()


@settings(max_examples=60, deadline=None)
@given(J=arrays(np.float64, (2, 6), elements=st.floats(-3, 3, width=64)))
def test_pcgrad_two_tasks_no_negative_inner_product(J):
    """Each projected gradient is orthogonal to the one it conflicted with, so the update has a
    non-negative inner product with both task gradients."""
    assume(nondegenerate(J))
    d = weights_of("pcgrad", J) @ J
    scale = np.linalg.norm(J, axis=1).max() ** 2
    assert (J @ d >= -1e-6 * scale).all()
    g1, g2 = J
    if g1 @ g2 < 0:  # the paper's projection, by hand
        p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
        p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
        np.testing.assert_allclose(d, p1 + p2, atol=1e-6 * scale)


@settings(max_examples=30, deadline=None)
@given(J=jacobians)
def test_mgda_is_the_min_norm_point_of_the_convex_hull(J):
    assume(nondegenerate(J))
    # Frank-Wolfe run to a tight tolerance, so the property can be checked tightly
    w = weights_of(pt.objectives.MGDA(epsilon=1e-8, max_iters=2000), J)
    assert w.min() >= -1e-9 and abs(w.sum() - 1) < 1e-6
    d = w @ J
    # optimality (KKT): no vertex of the hull points below the min-norm level |d|^2
    scale = np.linalg.norm(J, axis=1).max() ** 2
    assert (J @ d >= d @ d - 5e-3 * scale).all()
    # and no random point of the hull is shorter
    rng = np.random.default_rng(0)
    points = rng.dirichlet(np.ones(len(J)), size=500) @ J
    assert (np.linalg.norm(points, axis=1) >= np.linalg.norm(d) - 5e-3 * np.sqrt(scale)).all()


@settings(max_examples=40, deadline=None)
@given(J=jacobians)
def test_imtl_projections_are_equal(J):
    assume(nondegenerate(J) and np.linalg.matrix_rank(J, tol=1e-3) == len(J))
    d = weights_of("imtl", J) @ J
    projections = J @ d / np.linalg.norm(J, axis=1)
    np.testing.assert_allclose(projections, projections.mean(), rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------
def conflicting_model(T=3, seed=0):
    torch.manual_seed(seed)
    model = pt.MultiTaskModel(
        nn.Sequential(nn.Linear(4, 6), nn.Tanh()), {f"t{i}": nn.Linear(6, 1) for i in range(T)}
    )
    x = torch.randn(32, 4)
    y = torch.randn(32, T)
    y[:, 1] = -3 * y[:, 0]  # tasks 0 and 1 pull the trunk in opposite directions
    return model, x, y


def losses_of(model, x, y):
    z = model.features(x)
    out = model.heads_forward(z)
    return torch.stack([((out[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(y.shape[1])]), z


def shared_grad(objective, model, x, y, path="exact"):
    model.zero_grad()
    engine = pt.GradientEngine(model, objective, path=path if hasattr(objective, "path") else None)
    losses, z = losses_of(model, x, y)
    engine.backward(losses, z)
    return torch.cat([p.grad.flatten() for p in model.shared_parameters()])


def naive_jacobian(model, x, y):
    losses, _ = losses_of(model, x, y)
    rows = [
        torch.cat(
            [
                g.flatten()
                for g in torch.autograd.grad(loss, model.shared_parameters(), retain_graph=True)
            ]
        )
        for loss in losses
    ]
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("upgrad", aggregation.UPGrad()),
        ("mgda", aggregation.MGDA()),
        ("pcgrad", aggregation.PCGrad()),
        ("imtl", aggregation.IMTLG()),
        ("cagrad", aggregation.CAGrad(c=0.4)),
        ("aligned-mtl", aggregation.AlignedMTL()),
        ("fairgrad", aggregation.FairGrad(alpha=1.0)),
        ("gradvac", aggregation.GradVac()),
        ("nashmtl", aggregation.NashMTL(n_tasks=3)),
    ],
)
def test_each_method_equals_torchjd_aggregator(name, reference):
    model, x, y = conflicting_model()
    # PCGrad and GradVac shuffle the task order: ours from a generator seeded from the global
    # RNG's seed, torchjd's reference from the global RNG itself
    torch.manual_seed(7)
    ours = shared_grad(make_objective(name), model, x, y)
    jacobian = naive_jacobian(model, x, y)
    torch.manual_seed(shuffle_seed(7))
    expected = reference(jacobian)
    torch.testing.assert_close(ours, expected, rtol=2e-3, atol=2e-5)


def test_exact_and_naive_paths_give_the_same_jacobian():
    model, x, y = conflicting_model()
    losses, _ = losses_of(model, x, y)
    exact = task_jacobian(losses, model.shared_parameters(), "exact")
    naive = task_jacobian(losses, model.shared_parameters(), "naive")
    for a, b in zip(exact, naive, strict=True):
        torch.testing.assert_close(a, b)
    flat = torch.cat([b.flatten(1) for b in naive], 1)
    torch.testing.assert_close(gramian(exact), flat @ flat.T)
    for path in ("exact", "naive"):
        torch.testing.assert_close(
            shared_grad(make_objective("upgrad"), model, x, y, path),
            shared_grad(make_objective("upgrad"), model, x, y, "exact"),
        )


def test_representation_path_uses_the_feature_gramian():
    model, x, y = conflicting_model()
    losses, z = losses_of(model, x, y)
    rows = [torch.autograd.grad(loss, z, retain_graph=True)[0].flatten() for loss in losses]
    Jz = torch.stack(rows)
    engine = pt.GradientEngine(model, "mgda@repr")
    expected = aggregation.MGDAWeighting()(Jz @ Jz.T)
    step = engine.backward(losses, z)
    torch.testing.assert_close(step.weights, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "positions"),
    [
        ("upgrad@repr", None),
        ("upgrad@repr", (0, 2)),
        ("upgrad@exact", None),
        ("upgrad@exact", (0, 2)),
        ("gradnorm", None),  # GradNorm and DB-MTL need every task in every step
        ("dbmtl", None),
    ],
)
@pytest.mark.parametrize("heads", ["separate", "columns", "one shared"])
def test_split_features_give_the_same_step_as_the_plain_features(method, heads, positions):
    """Each head reading its own leaf of z (one backward for every dL_t/dz, then, on the exact
    path, one batched pull-back through the trunk) gives the same weights and the same
    gradients on every parameter (GradNorm's task weights included) as the batched backward on
    the plain z, for separate heads, one column layer, and a head module two tasks share (a
    shared parameter past the features: the heads then read z itself), with all tasks or
    some."""
    model, x, y = conflicting_model()
    if heads == "columns":
        layer = nn.Linear(6, 3)
        model = pt.MultiTaskModel(model.trunk, pt.ColumnHeads(layer, {"t0": 1, "t1": 1, "t2": 1}))
    elif heads == "one shared":
        shared_head = model.heads["t0"]
        model = pt.MultiTaskModel(
            model.trunk, {"t0": shared_head, "t1": shared_head, "t2": model.heads["t2"]}
        )
    present = positions or (0, 1, 2)

    def run(split):
        model.zero_grad()
        objective = make_objective(method)
        engine = pt.GradientEngine(model, objective)
        z = model.features(x)
        features = engine.split(z) if split else z
        if split and heads == "one shared":  # a shared parameter past z: the heads read z
            assert features is z
        elif split:
            assert set(features) == set(model.task_names)
            assert all(leaf.is_leaf and leaf.requires_grad for leaf in features.values())
        out = model.heads_forward(features)
        losses = torch.stack([((out[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in present])
        step = engine.backward(losses, features, positions=positions)
        assert engine._owners is not None  # every head parameter that is not shared has a task
        return step.weights, [p.grad for p in [*model.parameters(), *objective.parameters()]]

    weights, grads = run(split=True)
    weights_ref, grads_ref = run(split=False)
    torch.testing.assert_close(weights, weights_ref, rtol=1e-4, atol=1e-6)
    for g, ref in zip(grads, grads_ref, strict=True):
        if ref is None:  # the head of a task absent from the step
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6)
    if positions is not None:
        assert weights[1] == 0


def test_heads_read_per_task_features_as_they_read_the_shared_ones():
    torch.manual_seed(0)
    z = torch.randn(5, 4)
    for heads in (
        {"a": nn.Linear(4, 1), "b": nn.Linear(4, 2)},
        pt.ColumnHeads(nn.Linear(4, 3), {"a": 1, "b": 2}),
    ):
        model = pt.MultiTaskModel(nn.Identity(), heads)
        shared = model.heads_forward(z)
        split = model.heads_forward({"a": z.clone(), "b": z.clone()})
        for name in ("a", "b"):
            torch.testing.assert_close(split[name], shared[name])
        assert list(model.heads_forward({"b": z})) == ["b"]
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        pt.ColumnHeads(nn.Sequential(nn.Linear(4, 3)), {"a": 3})({"a": z})


@pytest.mark.parametrize("name", ["upgrad", "pcgrad", "mgda", "imtl", "cagrad", "nashmtl"])
def test_update_is_not_the_equal_weighting_gradient_when_tasks_conflict(name):
    """The classic silent bug: one combined backward, then 'projecting' a gradient that has no
    per-task information left, gives back equal weighting. A real method must differ."""
    model, x, y = conflicting_model()
    equal = shared_grad(pt.Mean(), model, x, y)
    method = shared_grad(make_objective(name), model, x, y)
    cosine = torch.nn.functional.cosine_similarity(equal, method, dim=0)
    assert cosine < 0.999


def test_equal_weighting_is_the_gradient_of_the_mean_loss():
    model, x, y = conflicting_model()
    ours = shared_grad(pt.Mean(), model, x, y)
    model.zero_grad()
    losses_of(model, x, y)[0].mean().backward()
    expected = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    torch.testing.assert_close(ours, expected)


def test_heads_get_their_weighted_gradient_on_the_exact_path():
    model, x, y = conflicting_model()
    engine = pt.GradientEngine(model, "upgrad")
    losses, z = losses_of(model, x, y)
    step = engine.backward(losses, z)
    head = model.heads["t1"].weight.grad.clone()
    model.zero_grad()
    losses, _ = losses_of(model, x, y)
    (step.weights * losses).sum().backward()
    torch.testing.assert_close(head, model.heads["t1"].weight.grad)


def split_shared_grad(objective, model, x, y):
    """The shared gradient of one step with the heads reading the objective's split features."""
    model.zero_grad()
    engine = pt.GradientEngine(model, objective)
    features = engine.split(model.features(x))
    out = model.heads_forward(features)
    losses = torch.stack([((out[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(y.shape[1])])
    engine.backward(losses, features)
    return torch.cat([p.grad.flatten() for p in model.shared_parameters()])


@pytest.mark.parametrize("split", [False, True])
def test_dbmtl_first_step_balances_gradient_magnitudes(split):
    model, x, y = conflicting_model()
    objective = make_objective("dbmtl")
    grad = (split_shared_grad if split else shared_grad)(objective, model, x, y)
    losses, _ = losses_of(model, x, y)
    J = naive_jacobian(model, x, y) / (losses.detach()[:, None] + 1e-8)  # of log(L_t + 1e-8)
    buffer = (1 - 0.9) * J  # LibMTL's buffer after one step from zeros, no bias correction
    norms = buffer.norm(dim=1)
    expected = ((norms.max() / (norms + 1e-8))[:, None] * buffer).sum(0)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - {"weighted"}))
def test_every_method_trains_a_column_model_without_nan(name, hetero_splits):
    train, stop, _ = hetero_splits
    net = pt.mlp(1, 16, 2, out_features=3, seed=0)
    model = pt.MultiTaskModel(net[:-1], pt.ColumnHeads(net[-1], {f"task{i}": 1 for i in range(3)}))
    monitor = pt.training.GradientMonitor(every=3)
    trainer = pt.Trainer(
        name,
        max_epochs=2,
        patience=None,
        quiet=True,
        device="cpu",
        batch_size=64,
        callbacks=[monitor],
    )
    history = trainer.fit(model, pt.regression_tasks(["task0", "task1", "task2"]), train, stop)
    last = history.records[-1]
    assert all(np.isfinite(v) for v in last.values())
    assert {"weight/task0", "weight/task2"} <= set(last)
    assert "cos/task0|task1" in monitor.frame().columns


@pytest.mark.parametrize("name", ["pcgrad", "upgrad@repr", "mgda", "dbmtl", "famo"])
def test_methods_work_with_one_dataset_per_task(name, rng):
    import scipy.sparse as sp

    data = {
        t: pt.data.TaskData(
            sp.random(40, 12, density=0.3, format="csr", random_state=rng, dtype=np.float32),
            (rng.uniform(size=40) < 0.5).astype(np.float32),
        )
        for t in ("a", "b")
    }
    model = pt.MultiTaskModel(
        nn.Sequential(pt.models.SparseLinear(12, 8), nn.ReLU()),
        {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)},
    )
    tasks = [pt.Task("a", kind="binary"), pt.Task("b", kind="binary")]
    history = pt.Trainer(
        name, max_epochs=2, patience=None, quiet=True, device="cpu", batch_size=8
    ).fit(model, tasks, data, data)
    assert np.isfinite(history.records[-1]["stop_loss"])


@pytest.mark.parametrize("split", [False, True])
def test_gradnorm_first_step_pulls_each_weighted_norm_towards_the_mean(split):
    """On the first step every loss ratio is 1, so the target is the mean of the weighted norms
    and, with unit weights, d gap / d w_t = sign(n_t - mean n) * n_t, where n_t is the norm of
    task t's gradient on the last shared layer (one autograd.grad per task here). The shared
    update is then the gradient of the summed losses."""
    model, x, y = conflicting_model()
    objective = make_objective("gradnorm")
    grad = (split_shared_grad if split else shared_grad)(objective, model, x, y)
    losses, _ = losses_of(model, x, y)
    last = list(model.trunk[0].parameters())  # the trunk's last (and only) layer with weights
    norms = torch.stack(
        [
            torch.cat(
                [g.flatten() for g in torch.autograd.grad(loss, last, retain_graph=True)]
            ).norm()
            for loss in losses
        ]
    )
    torch.testing.assert_close(
        objective.task_weights.grad, torch.sign(norms - norms.mean()) * norms, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(grad, naive_jacobian(model, x, y).sum(0), rtol=1e-4, atol=1e-6)


def test_gradnorm_and_famo_learn_their_weights_inside_a_fit():
    """Inside Trainer.fit: GradNorm's weights are in the optimizer and renormalised after each
    step, so four full-batch SGD epochs give the paper's weights (the independent algorithm of
    test_reference_methods), summing to T; FAMO's after_step gets the batch's losses recomputed
    after the optimizer step (what its logit update needs), once per step."""
    from test_reference_methods import TASKS, reference_gradnorm, small_problem

    model, x, y = small_problem()
    model = model.float()
    x, y = x.float(), y.float()
    data = pt.MultiTargetData(x.numpy(), {t: y[:, i].numpy() for i, t in enumerate(TASKS)})
    tasks = pt.regression_tasks(list(TASKS))
    expected = reference_gradnorm(copy.deepcopy(model), x, y, 4, 0.05, 1.5)[-1][0]
    gradnorm = pt.GradNorm()
    sgd = dict(patience=None, quiet=True, device="cpu", batch_size=len(x))
    pt.Trainer(gradnorm, max_epochs=4, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), **sgd).fit(
        model, tasks, data, data
    )
    w = gradnorm.task_weights.detach()
    assert float(w.sum()) == pytest.approx(3.0, rel=1e-6)
    torch.testing.assert_close(w.double(), expected, rtol=1e-4, atol=1e-6)

    seen = []

    class Watched(pt.objectives.FAMO):
        def after_step(self, recompute):
            losses = recompute()
            seen.append(losses.detach().clone())
            super().after_step(lambda: losses)

    model = small_problem()[0].float()
    famo = Watched()
    pt.Trainer(famo, max_epochs=1, **sgd).fit(model, tasks, data, data)
    assert len(seen) == 1  # one full-batch step
    with torch.no_grad():  # the model now holds the weights after that step
        out = model(x)
        after = torch.stack([((out[t][:, 0] - y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)])
    torch.testing.assert_close(seen[0], after, rtol=1e-5, atol=1e-7)
    assert not torch.equal(famo.scalarizer._w.detach(), torch.zeros(3))


def test_path_suffix_only_for_gradient_methods():
    assert make_objective("pcgrad@naive").path == "naive"
    with pytest.raises(ValueError, match="no gradient path"):
        make_objective("geometric@repr")
    with pytest.raises(ValueError, match="unknown path"):
        make_objective("mgda@fast")


# --- random draws of the shuffling methods --------------------------------------------------
def four_conflicting_tasks(seed=0):
    """Four tasks, two pairs in conflict: PCGrad's and GradVac's result depends on the order
    in which they visit the others."""
    torch.manual_seed(seed)
    x = torch.randn(48, 4)
    targets = {
        "a": x[:, 0],
        "b": -2 * x[:, 0] + x[:, 1],
        "c": x[:, 1] * x[:, 2],
        "d": -x[:, 2] - x[:, 1] * x[:, 2],
    }
    data = pt.MultiTargetData(x.numpy(), {t: v.numpy() for t, v in targets.items()})
    return x, targets, data


def dropout_model(seed=0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 6), nn.Tanh())
    return pt.MultiTaskModel(trunk, {t: nn.Linear(6, 1) for t in "abcd"})


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_shuffling_methods_leave_the_global_rng_as_it_was(name):
    """A step draws its task order from the method's own generator: the global RNG (which the
    caller, dropout and everything else draw from) is not advanced."""
    x, targets, _ = four_conflicting_tasks()
    model = dropout_model().eval()
    engine = pt.GradientEngine(model, name)
    state = torch.random.get_rng_state()
    for _ in range(3):
        model.zero_grad()
        out = engine.forward(x)
        engine.backward({t: ((out[t][:, 0] - v) ** 2).mean() for t, v in targets.items()})
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_shuffling_methods_are_reproducible_whatever_the_callers_rng(name):
    """One Trainer seed, two caller RNG states: the same fit to the bit, the shuffles drawn
    from a generator seeded by the fit (from the Trainer's seed, not a constant), and the
    caller's RNG left as it was."""
    _, _, data = four_conflicting_tasks()
    tasks = pt.regression_tasks(list("abcd"))

    def fit(caller_seed, seed=3):
        model = dropout_model()
        objective = make_objective(name)
        torch.manual_seed(caller_seed)
        state = torch.random.get_rng_state()
        pt.Trainer(
            objective,
            max_epochs=2,
            patience=None,
            quiet=True,
            device="cpu",
            batch_size=16,
            seed=seed,
        ).fit(model, tasks, data, data)
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
        seeded = torch.Generator().manual_seed(shuffle_seed(seed))
        assert objective.generator.initial_seed() == seeded.initial_seed()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = fit(caller_seed=1)
    torch.testing.assert_close(fit(caller_seed=2), first, rtol=0, atol=0)
    fit(caller_seed=1, seed=4)  # another fit seed, another stream (checked inside)


def test_shuffles_do_not_shift_the_dropout_masks_of_the_fit():
    """Under one Trainer seed, PCGrad's fit sees the dropout masks UPGrad's fit sees (UPGrad
    draws nothing): the method's shuffles do not consume the fit's random stream, so a
    comparison of methods is paired on the masks as it is on the batches."""
    _, _, data = four_conflicting_tasks()
    tasks = pt.regression_tasks(list("abcd"))

    def masks(name):
        model = dropout_model()
        seen = []
        dropout = model.trunk[2]
        dropout.register_forward_hook(
            lambda module, inputs, output: seen.append(output == 0) if module.training else None
        )
        pt.Trainer(name, max_epochs=1, patience=None, quiet=True, device="cpu", batch_size=16).fit(
            model, tasks, data, data
        )
        return seen

    pcgrad, upgrad = masks("pcgrad"), masks("upgrad")
    assert len(pcgrad) == len(upgrad) == 3
    for step, (left, right) in enumerate(zip(pcgrad, upgrad, strict=True), start=1):
        assert torch.equal(left, right), f"step {step}"


def _cube_with(failure):
    """``x ** 3`` whose backward first runs ``failure(grad)``: an operation the batched (vmap)
    backward has no rule for, or an error of another kind."""

    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, grad):
            failure(grad)
            (x,) = ctx.saved_tensors
            return 3 * x * x * grad

    return Cube.apply


def test_the_jacobian_falls_back_to_one_pass_per_task_only_for_a_batching_error():
    from polytask.engine._linalg import BatchedBackwardWarning

    w = torch.tensor([1.0, 2.0], requires_grad=True)

    def losses(cube):
        return torch.stack([cube(w).sum(), (cube(w) * w).sum()])

    item = _cube_with(lambda grad: grad.sum().item())  # .item() has no batching rule
    with pytest.warns(BatchedBackwardWarning, match="one backward pass per task"):
        (blocks,) = task_jacobian(losses(item), [w])
    torch.testing.assert_close(blocks, torch.tensor([[3.0, 12.0], [4.0, 32.0]]))

    def out_of_memory(grad):
        raise torch.cuda.OutOfMemoryError("ran out of memory in the batched backward")

    def broken(grad):
        raise RuntimeError("a custom function's own bug")

    for failure, error in ((out_of_memory, torch.cuda.OutOfMemoryError), (broken, RuntimeError)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", BatchedBackwardWarning)  # no silent fallback
            with pytest.raises(error, match=r"out of memory|own bug"):
                task_jacobian(losses(_cube_with(failure)), [w])
