"""A float64 model trains and predicts on float64 inputs: the data follow the model's dtype."""

from __future__ import annotations

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
