"""Monitors record one fit: a second fit with the same callback starts from an empty record."""

from __future__ import annotations

from torch import nn

import polytask as pt


def test_monitors_keep_only_the_latest_fit(hetero_splits):
    train, stop, _ = hetero_splits
    names = ["task0", "task1", "task2"]
    gradients = pt.training.GradientMonitor(every=2)
    probe = pt.training.TaskMetricProbe(pt.regression_tasks(names), stop, every=5)
    frames = []
    for epochs in (2, 1):
        model = pt.MultiTaskModel(pt.mlp(1, 8, 2), {t: nn.Linear(8, 1) for t in names})
        trainer = pt.Trainer(
            max_epochs=epochs,
            patience=None,
            quiet=True,
            device="cpu",
            batch_size=20,
            callbacks=[gradients, probe],
        )
        trainer.fit(model, pt.regression_tasks(names), train, stop)
        frames.append((gradients.frame(), probe.frame()))
    (grad_first, probe_first), (grad_second, probe_second) = frames
    # the second fit is half as long: half the rows, steps counted from its own start
    assert len(grad_second) * 2 == len(grad_first) > 0
    assert grad_second["step"].tolist() == grad_first["step"].tolist()[: len(grad_second)]
    assert grad_second["epoch"].nunique() == 1
    assert len(probe_second) * 2 == len(probe_first) > 0
