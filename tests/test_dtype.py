"""A float64 model trains and predicts on float64 inputs: the data follow the model's dtype."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import polytask as pt

NAMES = ("a", "b")


def model(dtype, sparse=False):
    torch.manual_seed(0)
    first = pt.models.SparseLinear(6, 8) if sparse else nn.Linear(6, 8)
    trunk = nn.Sequential(first, nn.ReLU())
    return pt.MultiTaskModel(trunk, {t: nn.Linear(8, 1) for t in NAMES}).to(dtype)


def data(kind, rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    y = {t: (x @ rng.normal(size=6)).astype(np.float32) for t in NAMES}
    if kind == "shared":
        return pt.MultiTargetData(x, y)
    if kind == "loaders":
        return {
            t: DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y[t])), 16)
            for t in NAMES
        }
    inputs = sp.csr_matrix(x) if kind == "csr" else x
    return {t: pt.data.TaskData(inputs, y[t]) for t in NAMES}


@pytest.mark.parametrize("kind", ["shared", "per-task", "csr", "loaders"])
@pytest.mark.parametrize("method", ["mean", "uw", "upgrad", "upgrad@repr"])
def test_a_float64_model_trains_as_its_float32_twin(kind, method):
    tasks = pt.regression_tasks(list(NAMES))
    train, stop = data(kind, 64, 0), data(kind, 32, 1)
    histories = {}
    for dtype in (torch.float32, torch.float64):
        net = model(dtype, sparse=kind == "csr")
        trainer = pt.Trainer(method, max_epochs=2, batch_size=16, quiet=True, device="cpu")
        histories[dtype] = trainer.fit(net, tasks, train, stop)
        assert all(p.dtype == dtype for p in net.parameters())
        if kind != "loaders":
            test = data(kind, 20, 2)
            x = test.x if kind == "shared" else test["a"].x
            predictions = pt.predict(net, tasks, x)
            assert predictions["a"].dtype == (np.float64 if dtype == torch.float64 else np.float32)
    pairs = zip(histories[torch.float32].records, histories[torch.float64].records, strict=True)
    for r32, r64 in pairs:
        for key in ("train_loss", "stop_loss", "weight/a"):
            assert r64[key] == pytest.approx(r32[key], rel=1e-4), key


def _exact_model():
    """y = 1e9 * x - 1e9: a float32 copy of x = 1 + 1e-9 (that is, 1) predicts 0, not 1."""
    m = pt.MultiTaskModel(nn.Identity(), {"a": nn.Linear(1, 1)}).double()
    with torch.no_grad():
        m.heads["a"].weight.fill_(1e9)
        m.heads["a"].bias.fill_(-1e9)
    return m


@pytest.mark.parametrize("container", ["multitarget", "taskdata"])
def test_float64_inputs_stay_exact_when_stored_as_float64(container):
    x, y = np.full((8, 1), 1.0 + 1e-9), np.zeros(8)
    task = [pt.Task("a")]

    def build(**options):
        if container == "multitarget":
            return pt.MultiTargetData(x, {"a": y}, **options)
        return {"a": pt.data.TaskData(x, y, **options)}

    exact = pt.evaluate(_exact_model(), task, build(dtype=torch.float64))["a"]["mse"]
    assert exact == pytest.approx(1.0, rel=1e-5)  # (1e9 * 1e-9)^2, computed in float64
    rounded = pt.evaluate(_exact_model(), task, build())["a"]["mse"]
    assert rounded == 0.0  # the float32 default rounds 1 + 1e-9 to 1
    trainer = pt.Trainer(max_epochs=1, quiet=True, device="cpu")
    with pytest.warns(UserWarning, match="data: the inputs were given in float64 and stored"):
        trainer.fit(_exact_model(), task, build(), build())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact inputs: nothing to say
        trainer.fit(_exact_model(), task, build(dtype=torch.float64), build(dtype=torch.float64))
    with pytest.raises(ValueError, match=r"stored as torch\.float32 or torch\.float64"):
        build(dtype=torch.float16)


def test_float64_regression_targets_keep_their_precision():
    target = torch.tensor([1.0 + 1e-12, 2.0], dtype=torch.float64)
    prepared = pt.Task("a").prepare_target(target)
    assert prepared.dtype == torch.float64 and torch.equal(prepared, target)
    assert pt.Task("a").prepare_target(target.float()).dtype == torch.float32
