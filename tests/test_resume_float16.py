"""What a checkpoint must hold beyond the weights, and what a float16 step that the gradient
scaler skips must leave alone (found by an independent review of resume and precision)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import polytask as pt
from conftest import small_model

TASKS = pt.regression_tasks(["task0", "task1", "task2"])


def _records(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


class _StopAfter(pt.Callback):
    """Interrupts the fit at the end of an epoch (after the checkpoint is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state, record) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def _overflowing(hetero_splits):
    """Hetero data with one huge target: its squared error overflows float16 now and then."""
    train, stop, _ = hetero_splits
    y = train.targets["task0"].clone()
    y[0] = 3e4
    return pt.MultiTargetData(train.x, {**train.targets, "task0": y}), stop


def test_a_float16_resume_reports_the_weights_an_uninterrupted_fit_reports(hetero_splits, tmp_path):
    """A skipped (overflowed) step reports the last finite weights; after a resume they come
    from the checkpoint, not uniform weights."""
    train, stop = _overflowing(hetero_splits)

    def fit(checkpoint, callbacks=()):
        trainer = pt.Trainer(
            pt.NashMTL(),
            max_epochs=6,
            batch_size=120,
            lr=1e-2,
            quiet=True,
            device="cpu",
            precision="16-mixed",
            checkpoint=checkpoint,
            callbacks=list(callbacks),
        )
        model = small_model()
        return model, trainer.fit(model, TASKS, train, stop)

    model, straight = fit(None)
    weights = [r["weight/task0"] for r in straight.records]
    assert len(set(weights)) > 1  # the weights move: a uniform report would differ
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, [_StopAfter(3)])
    resumed_model, resumed = fit(tmp_path, [_StopAfter(99)])
    assert _records(resumed) == _records(straight)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_famo_learns_nothing_from_a_step_the_scaler_skipped(hetero_splits):
    """FAMO's logits step after each optimizer step; on a skipped step there was none (its Adam
    would have moved them on a loss change of zero plus weight decay)."""
    train, stop, _ = hetero_splits
    x = train.x.clone()
    x[0] = 2e3  # the huge input overflows float16 gradients now and then
    train = pt.MultiTargetData(x, train.targets)

    class Watch(pt.Callback):
        def __init__(self) -> None:
            self.skipped_moves: list[float] = []

        def on_before_backward(self, state, losses, positions) -> None:
            learned = {k: v.clone() for k, v in state.objective.state_dict().items()}
            self.before = (state.scaler.get_scale(), learned)

        def on_step_end(self, state) -> None:
            scale, objective = self.before
            if state.scaler.get_scale() < scale:  # the scaler skipped this step
                now = state.objective.state_dict()
                self.skipped_moves.append(
                    max(float((now[k] - objective[k]).abs().max()) for k in now)
                )

    watch = Watch()
    pt.Trainer(
        "famo",
        max_epochs=2,
        batch_size=120,
        quiet=True,
        device="cpu",
        precision="16-mixed",
        callbacks=[watch],
    ).fit(small_model(), TASKS, train, stop)
    assert watch.skipped_moves  # some steps overflowed
    assert max(watch.skipped_moves) == 0.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("dtype", "model"),
        ("loss", "tasks"),
        ("metrics", "tasks"),
    ],
)
def test_a_checkpoint_of_another_dtype_loss_or_metrics_is_refused(
    change, field, hetero_splits, tmp_path
):
    train, stop, _ = hetero_splits
    settings = {"max_epochs": 1, "quiet": True, "device": "cpu", "checkpoint": tmp_path}
    pt.Trainer("mean", **settings).fit(small_model(), TASKS, train, stop)
    model, tasks = small_model(), TASKS
    if change == "dtype":
        model = model.double()
    elif change == "loss":
        tasks = [pt.Task(t.name, loss=nn.HuberLoss()) for t in TASKS]
    else:
        tasks = [pt.Task(t.name, metrics=("mae",)) for t in TASKS]
    with pytest.raises(ValueError, match=f"from another configuration; {field}"):
        pt.Trainer("mean", **{**settings, "max_epochs": 2}).fit(model, tasks, train, stop)


def test_a_killed_writes_temporary_file_is_removed_and_a_live_ones_kept(hetero_splits, tmp_path):
    """A kill during a checkpoint write leaves its temporary file (as large as a checkpoint):
    the next fit removes those of processes that are gone, never a running one's."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f".last.{int(gone.stdout)}.0123abcd.tmp"
    live = tmp_path / f".last.{os.getpid()}.4567ef89.tmp"
    for path in (dead, live):
        path.write_bytes(b"partial")
    train, stop, _ = hetero_splits
    pt.Trainer("mean", max_epochs=1, quiet=True, device="cpu", checkpoint=tmp_path).fit(
        small_model(), TASKS, train, stop
    )
    assert not dead.exists() and live.exists()
    assert (tmp_path / "last.pt").exists()
