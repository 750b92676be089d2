"""GateMonitor: per-task gate distributions in the History, and their plot."""

from __future__ import annotations

import pytest
import torch

import polytask as pt
from polytask.evaluation import plot_gate_weights
from polytask.models import CGC, PLE, DSelectK, MMoE, SharedBottom
from polytask.training import GateMonitor
from polytask.training._gates import gate_columns


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n=96, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return pt.MultiTargetData(x, {"a": x[:, 0].sin(), "b": x[:, 1] * x[:, 2]})


def _fit(model, monitor, epochs=3):
    data = _data()
    trainer = pt.Trainer(
        "mean", max_epochs=epochs, patience=None, quiet=True, device="cpu", callbacks=[monitor]
    )
    return trainer.fit(model, pt.regression_tasks(["a", "b"]), data, data)


@pytest.mark.parametrize(
    ("model", "n_choices"),
    [
        (MMoE(4, ["a", "b"], n_experts=3, expert_hidden=[6]), 3),
        (CGC(4, ["a", "b"], n_shared=2, n_specific=1, expert_hidden=[6]), 3),
        (PLE(4, ["a", "b"], n_levels=2, n_shared=2, n_specific=2, expert_hidden=[6]), 4),
        (DSelectK(4, ["a", "b"], n_experts=4, k=2, expert_hidden=[6]), 4),
    ],
    ids=["mmoe", "cgc", "ple", "dselect-k"],
)
def test_gate_columns_are_a_distribution_per_task_every_epoch(model, n_choices):
    monitor = GateMonitor(_data().x[:40])
    history = _fit(model, monitor)
    assert len(history) == 3
    for record in history.records:
        columns = gate_columns(record)
        # PLE's shared gate below the last level: every task's 2 experts and the 2 shared
        shared = {"shared@1": 2 * 2 + 2} if isinstance(model, PLE) and model.n_levels > 1 else {}
        assert sorted(columns) == ["a", "b", *shared]
        for task, names in columns.items():
            choices = shared.get(task, n_choices)
            assert names == [f"gate/{task}/{e}" for e in range(choices)]
            values = torch.tensor([record[c] for c in names])
            assert (values >= 0).all()
            torch.testing.assert_close(values.sum(), torch.tensor(1.0))
    frame = GateMonitor.frame(history)
    assert set(frame.columns) == {"epoch", "task", "expert", "weight"}
    assert len(frame) == 3 * (2 * n_choices + sum(shared.values()))


def test_columns_equal_the_mean_of_gate_weights_on_the_batch():
    model = MMoE(4, ["a", "b"], n_experts=3, expert_hidden=[6])
    x = _data().x[:25]
    monitor = GateMonitor(x)
    history = _fit(model, monitor, epochs=2)
    # the fit ends with the best epoch's weights (epoch 2 here, or 1): compare on that record
    best = history.best
    expected = model.gate_weights(x)
    for task in ("a", "b"):
        got = torch.tensor([best[f"gate/{task}/{e}"] for e in range(3)])
        torch.testing.assert_close(got, expected[task].mean(0).detach(), rtol=1e-5, atol=1e-6)


def test_every_epoch_false_records_once_at_the_end():
    model = MMoE(4, ["a", "b"], n_experts=2, expert_hidden=[6])
    history = _fit(model, GateMonitor(_data().x[:10], every_epoch=False))
    with_gates = [r["epoch"] for r in history.records if "gate/a/0" in r]
    assert with_gates == [3]


def test_a_model_without_gates_is_refused_before_training():
    model = SharedBottom.build(4, ["a", "b"], hidden=[8])
    with pytest.raises(TypeError, match="SharedBottom has no gate_weights"):
        _fit(model, GateMonitor(_data().x[:10]))


def test_bad_batch_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        GateMonitor(torch.zeros(0, 3))


def test_plot_gate_weights_draws_every_task(tmp_path):
    model = MMoE(4, ["a", "b"], n_experts=3, expert_hidden=[6])
    history = _fit(model, GateMonitor(_data().x[:10]), epochs=2)
    path = plot_gate_weights({"mmoe": history}, tmp_path / "gates.png")
    assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="GateMonitor"):
        plot_gate_weights({"x": pt.training.History(("a",), [{"epoch": 1}])}, tmp_path / "n.png")


def test_ple_shared_gates_are_read_where_the_forward_pass_reads_them():
    """Level l's shared gate reads the shared output of level l - 1 (x on the first level):
    the monitor's ``shared@<level>`` weights are the gates the forward pass mixes with."""
    from polytask.models._gated import gate

    model = PLE(4, ["a", "b"], n_levels=3, n_shared=2, n_specific=1, expert_hidden=[5], seed=3)
    x = _data().x[:12]
    got = model.shared_gate_weights(x)
    assert sorted(got) == ["shared@1", "shared@2"]
    shared_in, task_in = x, {"a": x, "b": x}
    for level in (0, 1):
        expected = gate(model.shared_gates[level], shared_in)
        torch.testing.assert_close(got[f"shared@{level + 1}"], expected)
        shared_in, task_in = model._level(level, shared_in, task_in)
    assert CGC(4, ["a", "b"]).shared_gate_weights(x) == {}
    monitor = GateMonitor(x)
    history = _fit(model, monitor, epochs=1)
    record = history.records[-1]
    means = model.shared_gate_weights(x)["shared@2"].mean(0)  # one epoch: the last weights
    torch.testing.assert_close(
        torch.tensor([record[f"gate/shared@2/{e}"] for e in range(4)]), means.detach()
    )
