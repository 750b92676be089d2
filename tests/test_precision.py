"""Mixed precision: autocast forward passes, a gradient scaler for float16, and methods that
read unscaled float32 Gramians (a loss scale s multiplies a Gramian by s^2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import polytask as pt
from polytask.experiments import SyntheticExperiment
from polytask.objectives._registry import OBJECTIVES

GRADIENT_METHODS = [
    "mgda",
    "pcgrad",
    "gradvac",
    "cagrad",
    "imtl",
    "nashmtl",
    "aligned-mtl",
    "upgrad",
    "fairgrad",
    "dbmtl",
    "gradnorm",
    "upgrad@repr",
    "mgda@repr",
]
EVERY_METHOD = [*sorted(set(OBJECTIVES) - {"weighted"}), "upgrad@repr", "mgda@repr"]


def _model(seed: int = 0, tasks: int = 3) -> pt.MultiTaskModel:
    heads = {f"t{i}": nn.Linear(8, 1) for i in range(tasks)}
    return pt.MultiTaskModel(pt.mlp(4, 8, 2, seed=seed), heads)


def _data(n: int = 96, tasks: int = 3, seed: int = 0) -> pt.MultiTargetData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    weights = torch.randn(4, tasks, generator=generator)
    y = torch.tanh(x @ weights) * torch.arange(1, tasks + 1)
    return pt.MultiTargetData(x, {f"t{i}": y[:, i] for i in range(tasks)})


def test_bf16_mixed_trains_hetero_to_within_ten_percent_of_float32():
    experiment = SyntheticExperiment("hetero", n=2000, n_tasks=3, depth=4, width=32, device="cpu")
    train, stop, test = experiment.data(0)
    tasks = experiment.tasks()
    errors = {}
    for precision in ("32", "bf16-mixed"):
        model = experiment.build_model(0)
        trainer = pt.Trainer(
            "mse",
            lr=3e-3,
            eps=experiment.eps,
            batch_size=32,
            max_epochs=30,
            patience=10,
            device="cpu",
            quiet=True,
            precision=precision,
        )
        trainer.fit(model, tasks, train, stop)
        metrics = pt.evaluate(model, tasks, test, against="clean")
        errors[precision] = sum(m["mse"] for m in metrics.values()) / len(metrics)
    assert errors["bf16-mixed"] <= 1.1 * errors["32"], errors


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_every_gradient_method_keeps_finite_weights_in_mixed_precision(precision):
    data = _data(64)
    for method in GRADIENT_METHODS:
        model = _model()
        trainer = pt.Trainer(
            method, batch_size=32, max_epochs=1, patience=None, quiet=True, device="cpu"
        )
        trainer.precision = precision
        history = trainer.fit(model, [pt.Task(f"t{i}") for i in range(3)], data, data)
        for i in range(3):
            assert all(math.isfinite(w) for w in history[f"weight/t{i}"]), (method, history)
        assert all(torch.isfinite(p).all() for p in model.parameters()), method


def _one_step(method: str, scaled: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One step of ``method`` on fixed losses; with ``scaled``, a GradScaler at 2^16 scales
    the backward and unscales the gradients before the same SGD step."""
    torch.manual_seed(0)
    model = _model(tasks=3)
    engine = pt.GradientEngine(model, method)
    optimizer = torch.optim.SGD([*model.parameters(), *engine.parameters()], lr=0.1)
    data = _data(32)
    y = torch.stack([data.targets[f"t{i}"] for i in range(3)], 1)
    outputs = engine.forward(data.x)
    losses = {f"t{i}": ((outputs[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(3)}
    if scaled:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        scaler.scale(torch.ones(()))  # creates the scale tensor
        step = engine.backward(losses, scale=scaler._scale)
        scaler.step(optimizer)
        scaler.update()
    else:
        step = engine.backward(losses)
        optimizer.step()
    engine.after_step(lambda: torch.stack(list(losses.values())).detach())
    return [p.detach().clone() for p in model.parameters()], step.weights


@pytest.mark.parametrize("method", EVERY_METHOD)
def test_every_method_makes_the_same_update_whatever_the_loss_scale(method):
    plain, plain_weights = _one_step(method, scaled=False)
    scaled, scaled_weights = _one_step(method, scaled=True)
    torch.testing.assert_close(scaled_weights, plain_weights, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(scaled, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_float16_scaled_gramian_would_overflow_but_the_engine_reads_it_unscaled():
    """At scale 2^16 a Gramian of float16 feature gradients of size ~1 would be ~2^32: past
    float16's range. The engine widens and unscales before the product."""
    assert torch.finfo(torch.float16).max < 2.0**32
    model = _model()
    engine = pt.GradientEngine(model, "upgrad@repr")
    data = _data(32)
    outputs = engine.forward(data.x)
    losses = {f"t{i}": outputs[f"t{i}"].square().mean() * 100 for i in range(3)}
    step = engine.backward(losses, scale=torch.tensor(2.0**16))
    assert torch.isfinite(step.weights).all()


def test_precision_is_checked_and_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        pt.Trainer(precision="8-mixed")
    data = _data(32)
    tasks = [pt.Task(f"t{i}") for i in range(3)]
    trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu", precision="bf16-mixed")
    with pytest.raises(ValueError, match="float32 model"):
        trainer.fit(_model().double(), tasks, data, data)
    sparse = {f"t{i}": pt.TaskData(data.x.numpy(), data.targets[f"t{i}"].numpy()) for i in range(3)}
    import scipy.sparse as sp

    sparse = {t: pt.TaskData(sp.csr_matrix(d.x), d.y) for t, d in sparse.items()}
    with pytest.raises(ValueError, match=r"precision='bf16-mixed'.*autocast"):
        trainer.fit(_model(), tasks, sparse, sparse)


def test_float16_fit_resumes_its_scaler_and_refuses_another_precision(tmp_path):
    data = _data(64)
    tasks = [pt.Task(f"t{i}") for i in range(3)]
    scales = []

    class FirstScale(pt.Callback):
        """The loss scale of each fit's first step."""

        def on_fit_start(self, state):
            self.first = True

        def on_before_backward(self, state, losses, positions):
            if self.first:
                scales.append(state.scaler.get_scale())
                self.first = False

    def trainer(precision, epochs):
        return pt.Trainer(
            "upgrad",
            max_epochs=epochs,
            patience=None,
            quiet=True,
            device="cpu",
            precision=precision,
            checkpoint=tmp_path,
            callbacks=[FirstScale()],
        )

    trainer("16-mixed", 2).fit(_model(), tasks, data, data)
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["fingerprint"]["precision"] == "16-mixed"
    assert saved["scaler"]["scale"] > 0
    # a scale no fresh scaler starts from: the resumed fit's first step must run at it
    saved["scaler"]["scale"] = 1024.0
    torch.save(saved, tmp_path / "last.pt")
    history = trainer("16-mixed", 3).fit(_model(), tasks, data, data)
    assert history["epoch"] == [1, 2, 3]
    assert scales == [2.0**16, 1024.0]
    with pytest.raises(ValueError, match="precision: 16-mixed -> bf16-mixed"):
        trainer("bf16-mixed", 3).fit(_model(), tasks, data, data)
