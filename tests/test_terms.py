"""Structured terms: hand computations, gradients to both tied outputs, validation, and fits."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import polytask as pt
from polytask.objectives import WithTerms

binary = [pt.Task("a", kind="binary"), pt.Task("b", kind="binary")]
stars = [
    pt.Task("stars", kind="multiclass", size=5),
    pt.Task("polarity", kind="multiclass", size=3),
]
STARS_TO_POLARITY = {0: 0, 1: 0, 2: 1, 3: 2, 4: 2}


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def softmax(v):
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_consistency_by_hand():
    a = torch.tensor([[0.0], [2.0], [-1.0]])
    b = torch.tensor([[1.0], [2.0], [1.0]])
    pa, pb = sigmoid(a.numpy()), sigmoid(b.numpy())
    for distance, expected in [
        ("absolute", np.abs(pa - pb).mean()),
        ("squared", ((pa - pb) ** 2).mean()),
    ]:
        term = pt.Consistency([("a", "b")], weight=3.0, distance=distance)
        term.bind(binary)
        assert float(term({"a": a, "b": b})) == pytest.approx(3.0 * expected, rel=1e-6)


def test_consistency_with_a_callable_distance_and_transforms():
    """A joint 4-class head (site x sentiment) against a binary head through its marginal."""
    tasks = [pt.Task("joint", kind="multiclass", size=4), pt.Task("sentiment", kind="binary")]
    joint = torch.tensor([[0.0, 1.0, 2.0, 0.5], [1.0, 0.0, 0.0, 3.0]])
    sentiment = torch.tensor([[0.3], [-0.4]])

    def positive(raw):  # columns 1 and 3 are the positive classes
        return torch.softmax(raw, dim=1)[:, [1, 3]].sum(dim=1, keepdim=True)

    term = pt.Consistency(
        [("joint", "sentiment", positive, None)],
        distance=lambda u, v: (u - v).abs().max(dim=1).values,
    )
    term.bind(tasks)
    p = softmax(joint.numpy())
    expected = np.abs(p[:, [1, 3]].sum(1) - sigmoid(sentiment.numpy())[:, 0]).mean()
    assert float(term({"joint": joint, "sentiment": sentiment})) == pytest.approx(expected)


@pytest.mark.parametrize("penalty", ["kl", "absolute"])
def test_hierarchical_by_hand(penalty):
    torch.manual_seed(0)
    fine, coarse = torch.randn(6, 5), torch.randn(6, 3)
    term = pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY, weight=0.5, penalty=penalty)
    term.bind(stars)
    pf, q = softmax(fine.numpy().astype(np.float64)), softmax(coarse.numpy().astype(np.float64))
    p = np.stack([pf[:, :2].sum(1), pf[:, 2], pf[:, 3:].sum(1)], axis=1)
    kl, l1 = (p * np.log(p / q)).sum(1).mean(), np.abs(p - q).sum(1).mean()
    expected = kl if penalty == "kl" else l1
    value = float(term({"stars": fine, "polarity": coarse}))
    assert value == pytest.approx(0.5 * expected, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-4, 4), min_size=5, max_size=5), st.sampled_from(["kl", "absolute"]))
def test_hierarchical_is_zero_exactly_when_the_coarse_output_agrees(logits, penalty):
    """Property: a coarse head predicting exactly the aggregated fine distribution costs 0; any
    other distribution costs more."""
    term = pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY, penalty=penalty)
    term.bind(stars)
    fine = torch.tensor([logits], dtype=torch.float64)
    agreeing = term.aggregated(fine).log()  # logits whose softmax is the aggregate
    assert float(term({"stars": fine, "polarity": agreeing})) == pytest.approx(0.0, abs=1e-9)
    shifted = agreeing + torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(term({"stars": fine, "polarity": shifted})) > 1e-6


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-4, 4), min_size=6, max_size=6),
    st.lists(st.floats(-4, 4), min_size=6, max_size=6),
    st.sampled_from(["absolute", "squared"]),
)
def test_consistency_is_a_symmetric_distance_zero_on_agreement(a, b, distance):
    """Property: the term is 0 when both outputs predict the same, positive otherwise, and the
    same whichever output of the pair comes first."""
    term = pt.Consistency([("a", "b")], distance=distance)
    term.bind(binary)
    swapped = pt.Consistency([("b", "a")], distance=distance)
    swapped.bind(binary)
    ta = torch.tensor(a, dtype=torch.float64)[:, None]
    tb = torch.tensor(b, dtype=torch.float64)[:, None]
    assert float(term({"a": ta, "b": ta.clone()})) == 0.0
    value = float(term({"a": ta, "b": tb}))
    assert value == pytest.approx(float(swapped({"a": ta, "b": tb})))
    assert (value > 0) == bool((torch.sigmoid(ta) != torch.sigmoid(tb)).any())


@pytest.mark.parametrize(
    "term",
    [
        pt.Consistency([("a", "b")]),
        pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY),
    ],
    ids=["consistency", "hierarchical"],
)
def test_the_gradient_reaches_both_outputs(term):
    torch.manual_seed(1)
    names = term.reads
    tasks = binary if names == ("a", "b") else stars
    term.bind(tasks)
    outputs = {
        t.name: torch.randn(4, t.size, requires_grad=True) for t in tasks
    }  # raw logits, disagreeing
    term(outputs).backward()
    for name in names:
        assert outputs[name].grad is not None and outputs[name].grad.abs().sum() > 0, name


def test_bad_pairs_mappings_and_unknown_tasks_raise_clear_errors():
    with pytest.raises(ValueError, match="two different tasks"):
        pt.Consistency([("a", "a")])
    with pytest.raises(TypeError, match="must be callable"):
        pt.Consistency([("a", "b", "sigmoid", None)])
    with pytest.raises(ValueError, match="at least one pair"):
        pt.Consistency([])
    with pytest.raises(ValueError, match="distance"):
        pt.Consistency([("a", "b")], distance="cosine")
    with pytest.raises(ValueError, match="weight"):
        pt.Consistency([("a", "b")], weight=-1)
    with pytest.raises(KeyError, match="unknown task 'c'"):
        pt.Consistency([("a", "c")]).bind(binary)
    with pytest.raises(ValueError, match=r"1 and\s+3 columns"):
        pt.Consistency([("a", "polarity")]).bind([binary[0], stars[1]])
    bind = lambda mapping: pt.Hierarchical("stars", "polarity", mapping).bind(stars)  # noqa: E731
    with pytest.raises(ValueError, match=r"fine classes \[4\] map to no coarse class"):
        bind({0: 0, 1: 0, 2: 1, 3: 2})
    with pytest.raises(ValueError, match=r"unknown fine classes \[7\]"):
        bind({**STARS_TO_POLARITY, 7: 1})
    with pytest.raises(ValueError, match="unknown coarse classes"):
        bind({**STARS_TO_POLARITY, 4: 3})
    with pytest.raises(ValueError, match=r"coarse classes \[1\] receive no fine class"):
        bind([0, 0, 2, 2, 2])
    with pytest.raises(KeyError, match="unknown task 'stars'"):
        pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY).bind(binary)
    with pytest.raises(ValueError, match="regression"):
        pt.Hierarchical("stars", "r", STARS_TO_POLARITY).bind([stars[0], pt.Task("r")])
    with pytest.raises(TypeError, match="only a Term"):
        pt.Mean() + 3


def _stars_data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    fine = (x[:, :2].sum(1) * 1.2 + 2).round().clamp(0, 4).long()
    coarse = torch.tensor([STARS_TO_POLARITY[int(f)] for f in fine])
    return pt.MultiTargetData(x, {"stars": fine, "polarity": coarse})


def _stars_model():
    torch.manual_seed(0)
    return pt.MultiTaskModel(
        pt.mlp(6, 16, 1, seed=0), {"stars": nn.Linear(16, 5), "polarity": nn.Linear(16, 3)}
    )


@pytest.mark.parametrize("base", ["mean", "upgrad"])
def test_terms_compose_with_objectives_and_are_recorded(base):
    data = _stars_data()
    term = pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY, weight=2.0)
    objective = pt.make_objective(base) + term
    assert isinstance(objective, WithTerms) and objective.terms == (term,)
    trainer = pt.Trainer(objective, max_epochs=3, patience=None, quiet=True, device="cpu")
    model, stop = _stars_model(), _stars_data(seed=1)
    history = trainer.fit(model, stars, data, stop)
    assert len(history["term/hierarchical"]) == 3
    assert len(history["stop_term/hierarchical"]) == 3
    assert all(v > 0 and math.isfinite(v) for v in history["term/hierarchical"])
    # the stop-set value recorded for the best epoch is the term on the restored model
    with torch.no_grad():
        expected = float(term(model(stop.x)))
    assert history.best["stop_term/hierarchical"] == pytest.approx(expected, rel=1e-4)


def test_a_loss_level_objective_adds_the_term_to_its_backward():
    """Mean + term gives the gradient of mean(losses) + term, and reports that value."""
    data = _stars_data(32)
    model = _stars_model()
    term = pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY, weight=0.7)
    objective = pt.Mean() + term
    objective.bind([t.name for t in stars])
    objective.bind_tasks(stars)
    out = model(data.x)
    losses = torch.stack([t.compute_loss(out[t.name], data.targets[t.name]) for t in stars])
    step = pt.GradientEngine(model, objective).backward(losses, terms=term(out)[None])
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = model(data.x)
    losses = torch.stack([t.compute_loss(out[t.name], data.targets[t.name]) for t in stars])
    expected = losses.mean() + term(out)
    expected.backward()
    assert float(step.value) == pytest.approx(float(expected.detach()))
    torch.testing.assert_close(step.weights, torch.full((2,), 0.5))
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_the_consistency_term_pulls_two_heads_together():
    """Two binary heads trained on contradicting labels disagree; a strong consistency term
    makes their predicted probabilities agree."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 0] > 0).float()
    data = pt.MultiTargetData(x, {"a": y, "b": 1 - y})

    def gap(objective):
        model = pt.MultiTaskModel(
            pt.mlp(4, 16, 1, seed=0), {"a": nn.Linear(16, 1), "b": nn.Linear(16, 1)}
        )
        trainer = pt.Trainer(
            objective, max_epochs=30, patience=None, quiet=True, device="cpu", lr=1e-2
        )
        trainer.fit(model, binary, data, data)
        with torch.no_grad():
            out = model(x)
        return float((torch.sigmoid(out["a"]) - torch.sigmoid(out["b"])).abs().mean())

    assert gap(pt.Mean()) > 0.5
    assert gap(pt.Mean() + pt.Consistency([("a", "b")], weight=10.0)) < 0.1


def test_terms_need_one_dataset_and_matching_shapes_before_any_step():
    tasks = [pt.Task("a", kind="binary"), pt.Task("b", kind="multiclass", size=3)]
    x = torch.randn(20, 4)
    data = pt.MultiTargetData(x, {"a": (x[:, 0] > 0).float(), "b": torch.zeros(20).long()})
    model = pt.MultiTaskModel(nn.Linear(4, 8), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 3)})
    before = [p.clone() for p in model.parameters()]
    wrong = pt.Consistency([("a", "b", None, lambda raw: torch.softmax(raw, 1))])
    trainer = pt.Trainer(pt.Mean() + wrong, max_epochs=1, quiet=True, device="cpu")
    shapes = r"\('a', 'b'\) gives tensors of shapes \(2, 1\) and \(2, 3\)"
    with pytest.raises(ValueError, match=shapes):
        trainer.fit(model, tasks, data, data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    per_task = {
        "a": pt.data.TaskData(x, (x[:, 0] > 0).float()),
        "b": pt.data.TaskData(x, torch.zeros(20).long()),
    }
    right = pt.Consistency([("a", "b", None, lambda raw: raw[:, :1])])
    trainer = pt.Trainer(pt.Mean() + right, max_epochs=1, quiet=True, device="cpu")
    with pytest.raises(ValueError, match="one dataset with every task's targets"):
        trainer.fit(model, tasks, per_task, per_task)


@pytest.mark.parametrize("method", ["upgrad", "upgrad@repr", "mgda@naive"])
def test_a_term_with_a_gradient_method_adds_its_gradient_to_the_update(method):
    """Whatever the heads read (per-task leaves of the features, or the features), a gradient
    method plus a term gives the method's update plus the term's gradient."""
    data = _stars_data(32)
    term = pt.Hierarchical("stars", "polarity", STARS_TO_POLARITY, weight=0.7)

    def step(with_term):
        model = _stars_model()
        objective = pt.make_objective(method)
        objective = objective + term if with_term else objective
        objective.bind([t.name for t in stars])
        objective.bind_tasks(stars)
        engine = pt.GradientEngine(model, objective)
        z = model.features(data.x)
        features = engine.split(z)
        out = model.heads_forward(features)
        losses = torch.stack([t.compute_loss(out[t.name], data.targets[t.name]) for t in stars])
        engine.backward(losses, features, terms=term(out)[None] if with_term else None)
        return model, [p.grad.clone() for p in model.parameters()]

    _, with_term = step(True)
    model, without = step(False)
    model.zero_grad()
    term(model(data.x)).backward()
    for a, b, p in zip(with_term, without, model.parameters(), strict=True):
        torch.testing.assert_close(a, b + p.grad, rtol=1e-4, atol=1e-6)
