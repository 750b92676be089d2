"""The sharing architectures (shared-bottom, MMoE, CGC, PLE, DSelect-k, cross-stitch): routing,
gates, what each declares shared, every method on every architecture, and the exact and
representation paths against the naive per-task backward."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchjd.aggregation import MGDAWeighting, UPGradWeighting

import polytask as pt
from polytask._graph import reached_parameters
from polytask.models import (
    CGC,
    PLE,
    BatchedExperts,
    CrossStitch,
    DSelectK,
    ExpertList,
    MMoE,
    SharedBottom,
)
from polytask.models._gated import smooth_step


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two on a shared machine, and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(arch, in_features=3, tasks=("a", "b"), seed=0, **kw):
    """A small model of each architecture."""
    if arch == "shared-bottom":
        return SharedBottom.build(in_features, tasks, hidden=[8], tower_hidden=[4], seed=seed)
    if arch == "mmoe":
        return MMoE(in_features, tasks, n_experts=4, expert_hidden=[6, 5], seed=seed, **kw)
    if arch == "cgc":
        return CGC(in_features, tasks, n_shared=2, n_specific=1, expert_hidden=[6], seed=seed)
    if arch == "ple":
        return PLE(
            in_features, tasks, n_levels=3, n_shared=2, n_specific=1, expert_hidden=[6], seed=seed
        )
    if arch == "dselect-k":
        return DSelectK(in_features, tasks, n_experts=4, k=2, expert_hidden=[6], seed=seed, **kw)
    if arch == "cross-stitch":
        return CrossStitch(in_features, tasks, hidden=[6, 5], seed=seed)
    raise ValueError(arch)


ARCHS = ["shared-bottom", "mmoe", "cgc", "ple", "dselect-k", "cross-stitch"]
GATED = ["mmoe", "cgc", "ple", "dselect-k"]


# --- routing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_routing_and_unknown_task(arch):
    model = build(arch, tasks={"a": 1, "b": 3})
    x = torch.randn(5, 3)
    outputs = model(x)
    assert list(outputs) == ["a", "b"]
    assert outputs["a"].shape == (5, 1) and outputs["b"].shape == (5, 3)
    assert torch.allclose(model(x, task="b"), outputs["b"])
    with pytest.raises(KeyError, match=r"unknown task 'c'.*\['a', 'b'\]"):
        model(x, task="c")
    # the representation path gives the same outputs
    z = model.features(x)
    assert pt.models.has_representation(model)
    both = model.heads_forward(z)
    assert all(torch.allclose(both[t], outputs[t]) for t in ("a", "b"))
    assert torch.allclose(model.heads_forward(z, "a"), outputs["a"])
    leaves = pt.TaskFeatures(z, ["b"])
    assert list(model.heads_forward(leaves)) == ["b"]


@pytest.mark.parametrize("arch", [*GATED, "cross-stitch"])
def test_heads_refuse_features_of_another_batch(arch):
    model = build(arch)
    z = model.features(torch.randn(4, 3))
    model.features(torch.randn(4, 3))
    with pytest.raises(ValueError, match="last features"):
        model.heads_forward(z)
    with pytest.raises(TypeError, match="TaskFeatures"):
        model.heads_forward({"a": z})


@pytest.mark.parametrize("arch", ARCHS)
def test_each_task_output_reads_only_its_own_leaf(arch):
    model = build(arch, tasks=("a", "b", "c"))
    z = model.features(torch.randn(6, 3))
    leaves = pt.TaskFeatures(z, model.task_names)
    outputs = model.heads_forward(leaves)
    grads = torch.autograd.grad(outputs["b"].sum(), list(leaves.values()), allow_unused=True)
    assert grads[0] is None and grads[2] is None and grads[1] is not None


# --- what each architecture declares ----------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_shared_and_owned_parameters_match_the_graph(arch):
    """Shared and owned partition the parameters; an owned parameter is reached by its task's
    output only; whatever two tasks reach, or the features depend on, is shared."""
    model = build(arch, tasks=("a", "b", "c"))
    x = torch.randn(4, 3)
    shared = {id(p) for p in model.shared_parameters()}
    owners = model.parameter_owners()
    every = {id(p) for p in model.parameters()}
    assert shared | set(owners) == every and not shared & set(owners)
    outputs = model(x)
    reached = {t: reached_parameters(out) for t, out in outputs.items()}
    upstream = reached_parameters(model.features(x))
    for pid in every:
        tasks = [t for t in reached if pid in reached[t]]
        owner = owners.get(pid)
        if pid in upstream or (len(tasks) > 1 and not isinstance(owner, list)):
            assert pid in shared
        if isinstance(owner, str):
            assert tasks == [owner]
        if isinstance(owner, list):  # one task per row: row t reaches task t only
            assert pid not in upstream and owner == list(model.task_names)
    assert upstream == shared  # the features depend on exactly the shared parameters
    # the public per-task lists cover what is not shared: each owned parameter is in its
    # task's list (a parameter divided by rows, in every task's)
    for pid, owner in owners.items():
        for task in [owner] if isinstance(owner, str) else owner:
            assert pid in {id(p) for p in model.task_parameters(task)}
    listed = {id(p) for t in model.task_names for p in model.task_parameters(t)}
    assert listed == set(owners)


def test_mmoe_gates_are_task_parameters_and_experts_shared():
    model = build("mmoe")
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.experts.parameters()}
    owners = model.parameter_owners()
    assert owners[id(model.gates["a"].weight)] == "a"
    assert owners[id(model.towers["b"][0].weight)] == "b"


def test_ple_shares_the_shared_gates_and_keeps_the_last_level_task_parts_own():
    model = build("ple", tasks=("a", "b"))
    shared = {id(p) for p in model.shared_parameters()}
    assert len(model.shared_gates) == model.n_levels - 1  # no shared gate on the last level
    assert all(id(g.weight) in shared for g in model.shared_gates)
    assert all(id(p) in shared for p in model.task_experts[0].parameters())
    owners = model.parameter_owners()
    assert owners[id(model.task_gates[-1]["b"].weight)] == "b"
    assert all(owners[id(p)] == "a" for p in model.task_experts[-1]["a"].parameters())


def test_cross_stitch_units_start_near_identity_and_the_last_is_owned_by_row():
    model = CrossStitch(3, ["a", "b", "c"], hidden=[4, 4, 4])
    for unit in model.stitch_weights():
        assert torch.allclose(unit.diagonal(), torch.full((3,), 0.9))
        assert torch.allclose(unit.sum(1), torch.ones(3))
    assert model.parameter_owners()[id(model.units[-1])] == ["a", "b", "c"]
    shared = {id(p) for p in model.shared_parameters()}
    assert id(model.units[0]) in shared and id(model.units[-1]) not in shared
    assert all(id(p) in shared for p in model.columns.parameters())


# --- experts ---------------------------------------------------------------------------------
def test_batched_experts_are_independent_and_equal_the_loop():
    experts = BatchedExperts(6, 4, [5, 3], "tanh", seed=3)
    x = torch.randn(7, 4)
    out = experts(x)
    assert out.shape == (7, 6, 3)
    for w in experts.weights:  # no two experts start with the same weights
        flat = w.detach().reshape(6, -1)
        distances = torch.cdist(flat, flat) + torch.eye(6)
        assert distances.min() > 1e-3
    loop = experts.unbatched()
    assert torch.allclose(loop(x), out, atol=1e-6)
    assert len({id(m) for m in loop.experts}) == 6


@pytest.mark.parametrize("arch", GATED)
def test_every_expert_of_a_model_is_a_fresh_module(arch):
    model = build(arch, tasks=("a", "b", "c"))
    banks = [m for m in model.modules() if isinstance(m, BatchedExperts)]
    assert banks
    seen = set()
    for bank in banks:
        for w in bank.weights:
            assert id(w) not in seen
            seen.add(id(w))
            flat = w.detach().reshape(bank.n_experts, -1)
            if bank.n_experts > 1:
                assert (torch.cdist(flat, flat) + torch.eye(bank.n_experts)).min() > 1e-4
    # two banks never start equal either (e.g. two tasks' experts in CGC/PLE)
    firsts = [b.weights[0].detach().reshape(-1) for b in banks]
    for i in range(len(firsts)):
        for j in range(i + 1, len(firsts)):
            if firsts[i].shape == firsts[j].shape:
                assert not torch.equal(firsts[i], firsts[j])


def test_tied_experts_are_refused():
    layer = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"\[module\] \* n"):
        ExpertList([layer] * 3)
    with pytest.raises(ValueError, match=r"\[module\] \* n"):
        MMoE(3, ["a", "b"], experts=ExpertList([nn.Sequential(layer, nn.ReLU())] * 2))
    fresh = ExpertList([nn.Sequential(nn.Linear(3, 4), nn.ReLU()) for _ in range(3)])
    model = MMoE(3, ["a", "b"], experts=fresh)
    assert model.n_experts == 3 and model(torch.randn(2, 3))["a"].shape == (2, 1)


def test_a_module_repeated_across_levels_or_depths_is_refused():
    """``[module] * n`` across PLE's levels or a cross-stitch column's depths ties weights that
    the model shows as separate parts."""
    experts = BatchedExperts(2, 3, [3])
    with pytest.raises(ValueError, match=r"shared_experts\[0\] and shared_experts\[1\]"):
        PLE(3, ["a", "b"], n_levels=2, expert_hidden=[3], shared_experts=[experts] * 2)
    own = {t: BatchedExperts(1, 3, [3]) for t in "ab"}
    with pytest.raises(
        ValueError, match=r"task_experts\[0\]\['a'\] and task_experts\[1\]\['a'\] share"
    ):
        PLE(3, ["a", "b"], n_levels=2, expert_hidden=[3], task_experts=[own, own])
    layer = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    columns = {"a": [layer, layer], "b": [nn.Linear(3, 3), nn.Linear(3, 3)]}
    with pytest.raises(ValueError, match="layer 0 of the column of 'a' and layer 1 of the column"):
        CrossStitch(3, ["a", "b"], columns=columns)
    fresh = [BatchedExperts(2, 3, [3]), BatchedExperts(2, 3, [3])]
    model = PLE(3, ["a", "b"], n_levels=2, expert_hidden=[3], shared_experts=fresh)
    assert model.shared_experts[1] is fresh[1]


def _tower_pair(width):
    """Two towers that share their first layer."""
    layer = nn.Linear(width, 3)
    return {"a": nn.Sequential(layer, nn.ReLU(), nn.Linear(3, 1)), "b": nn.Sequential(layer)}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: MMoE(3, ["a", "b"], expert_hidden=[4], towers=_tower_pair(4)),
            r"'towers.a.0.weight' belongs to the own parts of tasks 'a' and 'b'",
        ),
        (
            lambda: DSelectK(3, ["a", "b"], n_experts=2, expert_hidden=[4], towers=_tower_pair(4)),
            "own parts of tasks 'a' and 'b'",
        ),
        (
            lambda: CrossStitch(3, ["a", "b"], hidden=[4], towers=_tower_pair(4)),
            "own parts of tasks 'a' and 'b'",
        ),
        (
            lambda: CGC(
                3,
                ["a", "b"],
                shared_experts=BatchedExperts(2, 3, [4]),
                task_experts=dict.fromkeys("ab", BatchedExperts(1, 3, [4])),
            ),
            r"task_experts\[0\]\['a'\] and task_experts\[0\]\['b'\] share parameters",
        ),
    ],
)
def test_a_module_given_to_two_tasks_is_refused(make, message):
    """A gradient method credits a task's own parameter to that task alone: a module two tasks
    both own would get one task's update only, silently."""
    with pytest.raises(ValueError, match=message):
        make()


def test_float64_experts_and_towers_are_checked_in_their_dtype():
    experts = ExpertList([nn.Sequential(nn.Linear(3, 4), nn.ReLU()) for _ in range(2)]).double()
    towers = {t: nn.Linear(4, 1).double() for t in "ab"}
    model = MMoE(3, ["a", "b"], experts=experts, towers=towers).double()
    out = model(torch.randn(5, 3, dtype=torch.float64))
    assert out["a"].dtype == torch.float64 and out["a"].shape == (5, 1)
    with pytest.raises(ValueError, match="cannot read the 4-wide input"):
        MMoE(3, ["a", "b"], experts=experts, towers={"a": nn.Linear(5, 1).double()})


def test_ple_takes_experts_modules_on_every_level():
    shared = [BatchedExperts(2, 3, [6]), ExpertList([nn.Sequential(nn.Linear(6, 6), nn.Tanh())])]
    own = [
        {t: BatchedExperts(1, 3, [6]) for t in "ab"},
        {t: BatchedExperts(2, 6, [6]) for t in "ab"},
    ]
    model = PLE(3, ["a", "b"], n_levels=2, shared_experts=nn.ModuleList(shared), task_experts=own)
    assert model.shared_experts[1] is shared[1] and model.task_experts[1]["b"] is own[1]["b"]
    gates = model.gate_weights(torch.randn(4, 3))
    assert gates["a"].shape == (4, 3)  # the last level: a's 2 experts and the 1 shared
    out = model(torch.randn(4, 3))
    sum(o.sum() for o in out.values()).backward()
    assert all(p.grad is not None for e in (*shared, *own[1].values()) for p in e.parameters())
    with pytest.raises(
        ValueError, match="shared_experts takes one entry per level, a sequence of n_levels=2"
    ):
        PLE(3, ["a", "b"], n_levels=2, shared_experts=shared[:1])
    with pytest.raises(ValueError, match="task_experts takes one entry per level"):
        PLE(3, ["a", "b"], n_levels=2, task_experts=own[0])


def test_a_shared_module_given_as_a_task_part_is_refused():
    shared = BatchedExperts(2, 3, [4])
    with pytest.raises(ValueError, match=r"shared_experts\[0\] and task_experts\[0\]\['a'\]"):
        CGC(
            3,
            ["a", "b"],
            shared_experts=shared,
            task_experts={"a": shared, "b": BatchedExperts(1, 3, [4])},
        )


def test_gradnorm_reads_every_column_of_cross_stitch():
    """The shared parameters nearest the outputs of a cross-stitch model are the last layers of
    all the columns: GradNorm measures each task's gradient on all of them, not on one task's
    column only."""
    model = CrossStitch(3, ["a", "b", "c"], hidden=[6, 5], seed=0)
    engine = pt.GradientEngine(model, pt.GradNorm())
    x, g = torch.randn(8, 3), torch.Generator().manual_seed(0)
    targets = {t: torch.randn(8, 1, generator=g) for t in model.task_names}
    engine.backward(_losses(engine.forward(x), targets))
    expected = [p for t in model.task_names for p in model.columns[t][-1].parameters()]
    assert {id(p) for p in engine._last} == {id(p) for p in expected}


def test_gate_monitor_reads_a_float64_model():
    model = MMoE(4, ["a", "b"], n_experts=3, expert_hidden=[8]).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    data = pt.MultiTargetData(
        x, {t: torch.randn(32, generator=g, dtype=torch.float64) for t in "ab"}, dtype=torch.float64
    )
    monitor = pt.training.GateMonitor(x[:8])
    history = pt.Trainer(max_epochs=2, quiet=True, device="cpu", callbacks=[monitor]).fit(
        model, pt.regression_tasks(["a", "b"]), data, data
    )
    assert len(history.records) == 2
    for record in history.records:
        assert sum(record[f"gate/a/{e}"] for e in range(3)) == pytest.approx(1.0)


# --- gates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", GATED)
def test_gate_weights_are_a_distribution_per_task_and_example(arch):
    model = build(arch, tasks=("a", "b", "c"))
    x = torch.randn(9, 3) * 3
    weights = model.gate_weights(x)
    assert list(weights) == ["a", "b", "c"]
    for w in weights.values():
        assert w.ndim == 2 and w.shape[0] == 9
        assert (w >= 0).all()
        assert torch.allclose(w.sum(1), torch.ones(9), atol=1e-6)
        assert not torch.allclose(w[0], w[1])  # per example: the gates read x


def test_dselect_k_weights_sum_to_at_most_one_without_a_power_of_two():
    model = DSelectK(3, ["a"], n_experts=5, k=2)
    w = model.gate_weights(torch.randn(8, 3))["a"]
    assert w.shape == (8, 5) and (w >= 0).all() and (w.sum(1) <= 1 + 1e-6).all()
    assert model.regularization(torch.randn(8, 3)).item() >= 8 * 2  # 1/mass >= 1 per selector


def test_a_static_dselect_gate_counts_its_regularisers_once_per_batch():
    """The static gate's selectors are the same for every row: its penalty is the authors' (one
    count), whatever the batch size; a per-example gate's sums over its rows."""
    static = DSelectK(3, ["a"], n_experts=5, k=2, per_example=False, entropy_reg=0.1, seed=0)
    one, many = (static.regularization(torch.randn(n, 3)).item() for n in (1, 256))
    assert one == pytest.approx(many, rel=1e-6)
    routed = DSelectK(3, ["a"], n_experts=5, k=2, per_example=True, entropy_reg=0.1, seed=0)
    x = torch.randn(64, 3)
    rows = sum(routed.regularization(x[i : i + 1]).item() for i in range(64))
    assert routed.regularization(x).item() == pytest.approx(rows, rel=1e-4)
    # a data-parallel fit adds the processes' row sums, and counts a static penalty once
    assert routed.regularization_sums_rows and not static.regularization_sums_rows


def test_smooth_step_is_binary_outside_its_cubic_region():
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0])
    s = smooth_step(t, gamma)
    assert s[0] == 0 and s[1] == 0 and s[-2] == 1 and s[-1] == 1 and s[3] == 0.5
    assert ((s > 0) & (s < 1)).sum() == 3


@pytest.mark.parametrize("n_experts", [4, 8, 6])
def test_dselect_k_converged_gates_select_at_most_k_experts(n_experts):
    """Logits outside the cubic region (a converged gate): every selector is one-hot, so each
    example's gate has at most k non-zero weights and still sums to 1."""
    k = 3
    model = DSelectK(4, ["a", "b"], n_experts=n_experts, k=k, gamma=1.0, seed=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in model.gates.values():
            gate.z.weight.zero_()
            signs = torch.randint(0, 2, gate.z.bias.shape, generator=g) * 2 - 1
            gate.z.bias.copy_(signs * 0.5 * model.gamma)  # at the edge of the cubic region
            if not gate.power_of_2:  # a converged selector sits on a code with an expert
                codes = torch.randint(0, n_experts, (k,), generator=g)
                bits = gate.codes[codes].float() * 2 - 1  # (k, m) in {-1, 1}
                gate.z.bias.copy_(bits.reshape(-1) * model.gamma)
    x = torch.randn(16, 4)
    for w in model.gate_weights(x).values():
        assert ((w > 0).sum(1) <= k).all()
        assert torch.allclose(w.sum(1), torch.ones(16))
        r, _ = model.gates["a"].selectors(x)
        assert ((r == 0) | (r == 1)).all()


def test_dselect_k_training_converges_to_at_most_k_experts():
    model = DSelectK(
        3,
        ["a", "b"],
        n_experts=4,
        k=2,
        per_example=False,
        entropy_reg=0.05,
        seed=1,
        expert_hidden=[8],
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    targets = {"a": x[:, :1].sin(), "b": x[:, 1:2] * x[:, 2:3]}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    before = model.gate_weights(x)
    assert all(((w > 0).sum(1) == 4).all() for w in before.values())  # starts dense
    for _ in range(300):
        outputs = model(x)
        loss = sum(((outputs[t] - y) ** 2).mean() for t, y in targets.items())
        loss = loss + model.regularization(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for w in model.gate_weights(x).values():
            assert ((w > 0).sum(1) <= 2).all()
            assert torch.allclose(w.sum(1), torch.ones(128))


# --- every method on every architecture, both kinds of data ----------------------------------
def _multitarget(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    targets = {
        "a": np.sin(x[:, 0]).astype(np.float32),
        "b": (x[:, 1] * x[:, 2] > 0).astype(np.float32),
    }
    return pt.MultiTargetData(x, targets)


def _per_task(seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in (("a", 40), ("b", 56)):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        y = np.sin(x[:, 0]) if name == "a" else (x[:, 1] * x[:, 2] > 0)
        data[name] = pt.TaskData(x, y.astype(np.float32))
    return data


TASKS = [pt.Task("a"), pt.Task("b", kind="binary")]
METHODS = ["mean", "uw", "pcgrad", "mgda@repr", "upgrad"]


@pytest.mark.parametrize("source", ["multitarget", "per-task"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trains_with_each_method(arch, method, source):
    model = build(arch, tasks=TASKS)
    if source == "multitarget":
        train, stop = _multitarget(64, 0), _multitarget(32, 1)
    else:
        train, stop = _per_task(0), _per_task(1)
    start = [p.detach().clone() for p in model.parameters()]
    trainer = pt.Trainer(method, max_epochs=1, batch_size=32, quiet=True, lr=1e-2)
    history = trainer.fit(model, TASKS, train, stop)
    assert len(history) == 1 and np.isfinite(history["train_loss"][0])
    moved = [not torch.equal(a, b.detach()) for a, b in zip(start, model.parameters(), strict=True)]
    assert all(moved), f"{arch} with {method}: some parameters did not move"


def test_representation_path_is_refused_for_a_model_without_one():
    model = build("cross-stitch", tasks=TASKS)
    model.exposes_representation = False  # a model that declines to expose it
    trainer = pt.Trainer("mgda@repr", max_epochs=1, quiet=True)
    with pytest.raises(ValueError, match=r"MGDA@repr.*CrossStitch"):
        trainer.fit(model, TASKS, _multitarget(), _multitarget(16, 1))
    engine = pt.GradientEngine(model, "upgrad@repr")
    with pytest.raises(ValueError, match=r"UPGrad@repr.*CrossStitch"):
        engine.check()


# --- exact and representation paths against the naive one ---------------------------------
def _losses(outputs, targets):
    return {t: ((out - targets[t]) ** 2).mean() for t, out in outputs.items()}


def _engine_step(model, method, x, targets):
    engine = pt.GradientEngine(model, method)
    step = engine.backward(_losses(engine.forward(x), targets))
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return step, grads


def _case(arch, seed, batch, n_tasks, in_features):
    names = [f"t{i}" for i in range(n_tasks)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_features, generator=g, dtype=torch.float64)
    targets = {t: torch.randn(batch, 1, generator=g, dtype=torch.float64) for t in names}

    def make():
        return build(arch, in_features=in_features, tasks=names, seed=seed).double()

    return make, x, targets


CASES = dict(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 9),
    n_tasks=st.integers(2, 4),
    in_features=st.integers(1, 4),
)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=6, deadline=None)
@given(**CASES)
def test_exact_path_equals_naive(arch, seed, batch, n_tasks, in_features):
    make, x, targets = _case(arch, seed, batch, n_tasks, in_features)
    exact_step, exact = _engine_step(make(), "upgrad", x, targets)
    naive_step, naive = _engine_step(make(), "upgrad@naive", x, targets)
    assert torch.allclose(exact_step.weights, naive_step.weights, atol=1e-7)
    for a, b in zip(exact, naive, strict=True):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=6, deadline=None)
@given(**CASES)
def test_representation_path_uses_the_gramian_of_the_features_gradients(
    arch, seed, batch, n_tasks, in_features
):
    """By hand: one autograd.grad per task w.r.t. features(x), their Gramian, torchjd's
    weighting of it; the engine's @repr weights and update must be the same."""
    make, x, targets = _case(arch, seed, batch, n_tasks, in_features)
    model = make()
    z = model.features(x)
    losses = _losses(model.heads_forward(z), targets)
    rows = [
        torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses.values()
    ]
    jz = torch.stack(rows)
    gramian = jz @ jz.T
    for method, weighting in (("mgda@repr", MGDAWeighting()), ("upgrad@repr", UPGradWeighting())):
        hand = weighting(gramian)
        reference = make()
        values = _losses(reference(x), targets).values()
        total = sum(w * loss for w, loss in zip(hand, values, strict=True))
        expected = torch.autograd.grad(total, list(reference.parameters()), allow_unused=True)
        step, grads = _engine_step(make(), method, x, targets)
        assert torch.allclose(step.weights, hand, atol=1e-6), method
        for a, b in zip(grads, expected, strict=True):
            b = torch.zeros_like(a) if b is None else b
            assert torch.allclose(a, b, atol=1e-8, rtol=1e-6), method


def _per_task_step(model, method, xs, targets):
    engine = pt.GradientEngine(model, method)
    losses = {t: ((engine.forward(x, task=t) - targets[t]) ** 2).mean() for t, x in xs.items()}
    step = engine.backward(losses)
    return step, [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]


@pytest.mark.parametrize("arch", ARCHS)
def test_per_task_batches_on_the_representation_and_exact_paths(arch):
    """Each task its own rows. @repr: the tasks read different features, so their Gramian is
    diagonal, ``|dL_t/dz_t|^2``, weighted by hand; exact: the same update as the naive path."""
    names = ["a", "b", "c"]
    g = torch.Generator().manual_seed(3)
    xs = {t: torch.randn(4 + i, 3, generator=g, dtype=torch.float64) for i, t in enumerate(names)}
    targets = {t: torch.randn(len(x), 1, generator=g, dtype=torch.float64) for t, x in xs.items()}

    def make():
        return build(arch, tasks=names, seed=1).double()

    model = make()
    norms = []
    for t in names:
        z = model.features(xs[t])
        loss = ((model.heads_forward(z, task=t) - targets[t]) ** 2).mean()
        norms.append(torch.autograd.grad(loss, z)[0].square().sum())
    hand = MGDAWeighting()(torch.diag(torch.stack(norms)))
    reference = make()
    total = sum(
        w * ((reference(xs[t], task=t) - targets[t]) ** 2).mean()
        for w, t in zip(hand, names, strict=True)
    )
    expected = torch.autograd.grad(total, list(reference.parameters()), allow_unused=True)
    step, grads = _per_task_step(make(), "mgda@repr", xs, targets)
    assert torch.allclose(step.weights, hand, atol=1e-7)
    for a, b in zip(grads, expected, strict=True):
        assert torch.allclose(a, torch.zeros_like(a) if b is None else b, atol=1e-9, rtol=1e-7)
    exact_step, exact = _per_task_step(make(), "upgrad", xs, targets)
    naive_step, naive = _per_task_step(make(), "upgrad@naive", xs, targets)
    assert torch.allclose(exact_step.weights, naive_step.weights, atol=1e-7)
    for a, b in zip(exact, naive, strict=True):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)


# --- seeds -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_is_bit_identical_and_the_global_rng_is_untouched(arch):
    state = torch.get_rng_state()
    a, b, c = build(arch, seed=5), build(arch, seed=5), build(arch, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    trainer = pt.Trainer("upgrad", max_epochs=1, batch_size=16, quiet=True)
    for model in (a, b):
        trainer.fit(model, TASKS, *_two_sets())
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _two_sets():
    train = _multitarget(48, 0)
    stop = _multitarget(16, 1)
    return train, stop


# --- bad configurations ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MMoE(3, ["a", "b"], n_experts=0), "n_experts must be a positive integer"),
        (lambda: DSelectK(3, ["a", "b"], n_experts=0), "n_experts must be a positive integer"),
        (lambda: CGC(3, ["a", "b"], n_shared=0), "n_shared must be a positive integer"),
        (lambda: PLE(3, ["a", "b"], n_levels=0), "n_levels must be a positive integer"),
        (lambda: BatchedExperts(0, 3, [4]), "at least one expert"),
        (lambda: MMoE(3, ["a", "a"]), "task 'a' is named twice"),
        (lambda: CGC(3, [pt.Task("b"), pt.Task("b")]), "task 'b' is named twice"),
        (lambda: CrossStitch(3, ["a", "b", "a"]), "task 'a' is named twice"),
        (lambda: SharedBottom.build(3, ["x", "x"]), "task 'x' is named twice"),
        (
            lambda: MMoE(3, ["a", "b"], expert_hidden=[6], towers={"b": nn.Linear(5, 1)}),
            r"tower of task 'b' cannot read the 6-wide input it gets \(the mixture of the",
        ),
        (
            lambda: SharedBottom.build(3, ["a", "b"], hidden=[6], towers={"b": nn.Linear(5, 1)}),
            r"tower of task 'b' cannot read the 6-wide input it gets \(the bottom's output\)",
        ),
        (
            lambda: PLE(3, {"a": 2, "b": 1}, expert_hidden=[6], towers={"a": nn.Linear(6, 1)}),
            r"tower of task 'a' gives 1 columns, the task needs 2",
        ),
        (
            lambda: CrossStitch(3, ["a", "b"], hidden=[4], towers={"a": nn.Linear(3, 1)}),
            r"tower of task 'a' cannot read the 4-wide input it gets \(its column's last mixed",
        ),
        (
            lambda: MMoE(3, ["a"], towers={"c": nn.Linear(16, 1)}),
            r"towers for unknown tasks \['c'\]",
        ),
        (lambda: DSelectK(3, ["a", "b"], n_experts=4, k=5), "k=5 selectors cannot pick more"),
        (lambda: DSelectK(3, ["a"], gamma=0.0), "gamma must be positive"),
        (lambda: CrossStitch(3, ["a"]), "two tasks or more"),
        (
            lambda: CrossStitch(
                3, ["a", "b"], columns={"a": [nn.Linear(3, 4)], "b": [nn.Linear(3, 5)]}
            ),
            "give different shapes",
        ),
        (
            lambda: CGC(
                3,
                ["a", "b"],
                shared_experts=BatchedExperts(2, 3, [4]),
                task_experts={"a": BatchedExperts(1, 3, [5]), "b": BatchedExperts(1, 3, [4])},
            ),
            "give width 5, the shared experts 4",
        ),
        (lambda: MMoE(3, ["a", "b"], experts=nn.Linear(3, 4)), r"expected \(2, n_experts, width\)"),
        (
            lambda: MMoE(3, {"a": True, "b": 1}),
            r"the output width of task 'a' must be a positive integer, got True",
        ),
    ],
)
def test_bad_configuration_is_refused_at_construction(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# --- the docstring examples ------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    ["polytask.models._experts", "polytask.models._gated", "polytask.models._cross_stitch"],
)
def test_docstring_examples_run(module):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(module), optionflags=flags, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# --- the fast paths --------------------------------------------------------------------------
def test_batched_experts_load_a_state_dict_of_the_old_layout():
    """Version 1 stored each layer's weight (n_experts, in, out); such a checkpoint still loads
    (square layers included, told apart by the state dict's version, not by the shape)."""
    experts = BatchedExperts(3, 4, [4, 2], seed=1)
    state = experts.state_dict()
    old = {k: v.transpose(1, 2) if k.endswith("weight") else v for k, v in state.items()}
    old = type(state)(old)
    old._metadata = {k: {**v, "version": 1} for k, v in state._metadata.items()}
    fresh = BatchedExperts(3, 4, [4, 2], seed=2)
    fresh.load_state_dict(old)
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), experts(x))
    for current in (experts.state_dict(), dict(experts.state_dict())):  # a plain copy too
        fresh = BatchedExperts(3, 4, [4, 2], seed=2)
        fresh.load_state_dict(current)
        assert torch.equal(fresh(x), experts(x))


@pytest.mark.parametrize("bias", [False, True])
def test_gate_is_the_softmax_of_the_linear(bias):
    from polytask.models._gated import gate, mix

    linear = nn.Linear(5, 4, bias=bias)
    x = torch.randn(7, 5)
    assert torch.allclose(gate(linear, x), torch.softmax(linear(x), dim=-1), atol=1e-6)
    experts = torch.randn(7, 4, 3)
    weights = gate(linear, x)
    assert torch.allclose(mix(weights, experts), torch.einsum("be,bed->bd", weights, experts))
