"""Settings and losses that cannot train are refused before any step, saying what to fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import polytask as pt


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).normal(size=(60, 5)).astype("f4")
    return x, pt.split(pt.MultiTargetData(x, {"a": x[:, 0], "b": x[:, 1]}), (0.5, 0.25, 0.25))


def net() -> pt.MultiTaskModel:
    return pt.MultiTaskModel(pt.mlp(5, 8, 2), {"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})


class Stepped(pt.Callback):
    """Counts the steps a fit ran (none, when a check refuses it)."""

    steps = 0

    def on_step_end(self, state) -> None:
        Stepped.steps += 1


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (lambda o, t: (o - t) ** 2, r"task 'a': its loss returned shape \(2,\) for 2 rows"),
        (lambda o, t: 1.0, r"task 'a': its loss returned float"),
        (lambda o, t: ((o - t) ** 2).mean().detach(), r"task 'a': its loss is not on the graph"),
    ],
)
def test_a_custom_loss_must_be_a_scalar_on_the_graph(data, loss, message):
    _, (train, stop, _) = data
    Stepped.steps = 0
    trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu", callbacks=[Stepped()])
    with pytest.raises(ValueError, match=message):
        trainer.fit(net(), [pt.Task("a", loss=loss), pt.Task("b")], train, stop)
    assert Stepped.steps == 0


def test_a_good_custom_loss_trains(data):
    _, (train, stop, _) = data
    history = pt.Trainer(max_epochs=1, quiet=True, device="cpu").fit(
        net(), [pt.Task("a", loss=lambda o, t: (o - t).abs().mean()), pt.Task("b")], train, stop
    )
    assert np.isfinite(history["train_loss"][0])


@pytest.mark.parametrize(
    ("setting", "error", "message"),
    [
        ({"batch_size": 2.5}, ValueError, "batch_size must be a positive integer, got 2.5"),
        ({"batch_size": True}, ValueError, "batch_size must be a positive integer, got True"),
        ({"max_epochs": 2.0}, ValueError, "max_epochs must be a positive integer"),
        ({"seed": 1.5}, ValueError, "seed must be a non-negative integer"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"patience": 2.5}, ValueError, r"patience \(or None\) must be a positive integer"),
        ({"lr": float("inf")}, ValueError, "lr and eps must be positive and finite"),
        ({"eps": float("nan")}, ValueError, "lr and eps must be positive and finite"),
        ({"clip_grad_norm": float("inf")}, ValueError, "clip_grad_norm must be positive and"),
    ],
)
def test_trainer_numbers_are_checked(setting, error, message):
    with pytest.raises(error, match=message):
        pt.Trainer(**setting)


def test_numpy_integers_are_counts():
    trainer = pt.Trainer(batch_size=np.int64(8), seed=np.int32(3))
    assert trainer.batch_size == 8


def test_a_schedule_with_one_dataset_is_refused(data):
    _, (train, stop, _) = data
    trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu", schedule="sequential")
    with pytest.raises(ValueError, match=r"mixes one dataset per task.*one MultiTargetData"):
        trainer.fit(net(), [pt.Task("a"), pt.Task("b")], train, stop)


@pytest.mark.parametrize("schedule", ["sequential", "proportional", "temperature"])
def test_gradient_methods_need_several_tasks_per_step(data, schedule):
    x, _ = data
    train = {t: pt.TaskData(x[:30], x[:30, 0]) for t in "ab"}
    stop = {t: pt.TaskData(x[30:], x[30:, 0]) for t in "ab"}
    tasks = [pt.Task("a"), pt.Task("b")]
    refused = pt.Trainer("upgrad", max_epochs=1, quiet=True, device="cpu", schedule=schedule)
    with pytest.raises(ValueError, match="UPGrad combines the gradients of the tasks in a step"):
        refused.fit(net(), tasks, train, stop)
    # a loss-level method trains task by task, as the schedule asks
    history = pt.Trainer("mean", max_epochs=1, quiet=True, device="cpu", schedule=schedule).fit(
        net(), tasks, train, stop
    )
    assert np.isfinite(history["train_loss"][0])


def test_engine_checks_the_losses_of_a_users_loop():
    model = net()
    engine = pt.GradientEngine(model, "upgrad")
    out = model(torch.randn(4, 5))
    good = ((out["b"] - 1) ** 2).mean()
    cases = [
        ({}, ValueError, "no task's loss given"),
        ({"a": (out["a"] - 1) ** 2, "b": good}, ValueError, r"task 'a' is shape \(4, 1\)"),
        ({"a": ((out["a"] - 1) ** 2).mean().detach(), "b": good}, ValueError, "not on the graph"),
        ({"a": 0.5, "b": good}, ValueError, "task 'a' is float"),
        ([good, good], TypeError, "losses must be a mapping task -> scalar loss or a vector"),
    ]
    for losses, error, message in cases:
        with pytest.raises(error, match=message):
            engine.backward(losses)
    assert all(p.grad is None for p in model.parameters())  # refused before any backward


def test_a_history_column_no_epoch_recorded_is_a_key_error(data):
    _, (train, stop, _) = data
    history = pt.Trainer(max_epochs=1, quiet=True, device="cpu").fit(
        net(), [pt.Task("a"), pt.Task("b")], train, stop
    )
    assert history["stop_loss"] == [history.records[0]["stop_loss"]]
    assert {"epoch", "stop_loss", "stop_loss/a", "weight/b"} <= set(history.columns)
    with pytest.raises(KeyError, match="no epoch recorded 'stop_los'; did you mean 'stop_loss'"):
        history["stop_los"]
    assert pt.History(("a",))["stop_loss"] == []  # before any epoch, every column is empty


def test_a_gate_probe_the_model_cannot_read_is_refused_before_training(data):
    from polytask.models import MMoE
    from polytask.training import GateMonitor

    _, (train, stop, _) = data
    Stepped.steps = 0
    model = MMoE(5, ["a", "b"], n_experts=2, expert_hidden=[4])
    trainer = pt.Trainer(
        max_epochs=1, quiet=True, device="cpu", callbacks=[GateMonitor(np.zeros((2, 3))), Stepped()]
    )
    with pytest.raises(ValueError, match="GateMonitor: x has 3 features, the model reads 5"):
        trainer.fit(model, [pt.Task("a"), pt.Task("b")], train, stop)
    assert Stepped.steps == 0


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
def test_a_device_torch_knows_but_this_machine_lacks_is_named():
    from polytask._device import resolve_device

    with pytest.raises(ValueError, match="device 'mps' is not available here"):
        resolve_device("mps")


class Routed(nn.Module):
    """A user's model routed by ``forward(x, task_id)``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(5, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])

    def forward(self, x, task_id):
        return self.heads[task_id](self.trunk(x))


def test_routing_mistakes_of_a_users_model_are_named(data):
    _, (train, stop, _) = data
    tasks = [pt.Task("a"), pt.Task("b")]

    def wrap(**options):
        return pt.as_multitask(Routed(), ["a", "b"], shared="trunk", **options)

    with pytest.raises(ValueError, match=r"keys has 3 entries for the 2 tasks \['a', 'b'\]"):
        wrap(route="task_id", keys=range(3))
    with pytest.raises(ValueError, match=r"route='tsk' is not an argument of Routed.forward\(x, "):
        wrap(route="tsk", keys=[0, 1])
    trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu")
    with pytest.raises(ValueError, match=r"task 'b': Routed.forward\(x, task_id=5\) failed"):
        trainer.fit(wrap(route="task_id", keys=[0, 5]), tasks, train, stop)
    history = trainer.fit(wrap(route="task_id", keys=[0, 1]), tasks, train, stop)
    assert np.isfinite(history["train_loss"][0])


def test_a_model_built_like_the_gated_ones_points_to_build():
    from polytask.models import SharedBottom

    with pytest.raises(TypeError, match=r"use SharedBottom.build\(in_features, tasks"):
        SharedBottom(5, {"a": 1})
    with pytest.raises(TypeError, match=r"heads must be a mapping task -> nn\.Module"):
        pt.MultiTaskModel(nn.Linear(2, 2), [nn.Linear(2, 1)])


def test_adding_two_terms_says_to_add_them_to_a_method():
    first = pt.Consistency([("a", "b")])
    second = pt.Consistency([("b", "a")], name="other")
    with pytest.raises(TypeError, match=r"Consistency \+ Consistency: add terms to a method"):
        first + second
    assert len((pt.Mean() + first + second).terms) == 2  # the way that works


def test_a_binary_label_of_minus_one_says_how_missing_labels_are_marked():
    x = np.zeros((4, 2), "f4")
    data = pt.MultiTargetData(x, {"a": np.array([0, 1, -1, 1.0])})
    model = pt.MultiTaskModel(nn.Linear(2, 2), {"a": nn.Linear(2, 1)})
    trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu")
    with pytest.raises(ValueError, match=r"got \[-1.0\]; a missing label is NaN"):
        trainer.fit(model, [pt.Task("a", "binary", allow_missing=True)], data, data)
    with pytest.raises(ValueError, match=r"binary labels must be 0 or 1, got \[-1.0\]$"):
        trainer.fit(model, [pt.Task("a", "binary")], data, data)
