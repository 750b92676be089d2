"""The runnable examples, and a seed-style client: the classic hand-written multi-task code
(a module routed by an integer task id, CSR per-task datasets, round robin) trained by
polytask's Trainer and by its own loop, the latter giving the same update as a MultiTaskModel."""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import CountVectorizer
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, Dataset, TensorDataset

import polytask as pt
from polytask.data import csr_batch
from polytask.models import SparseLinear

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METHODS = ["sum", "uw", "upgrad", "mgda@repr"]

# small settings each example runs with here; a new example must be added (see the first test)
SMALL = {
    "own_loop.py": ["--synthetic", "--epochs", "10"],
    "lightning_module.py": ["--rows", "300", "--epochs", "4"],
}


@functools.cache
def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and far faster on a busy shared CPU, where
    a parallel matmul waits for a descheduled thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- every example runs -----------------------------------------------------------------------
def test_every_example_has_small_settings():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SMALL)


@pytest.mark.parametrize("method", METHODS)
def test_own_loop_example_learns(method, capsys):
    scores = example("own_loop").main([*SMALL["own_loop.py"], "--method", method])
    assert set(scores) == {"amazon", "imdb", "yelp"}
    # balanced labels: a constant or random guess scores F1 <= 0.67 on average
    assert min(scores.values()) > 0.7, scores
    assert np.mean(list(scores.values())) > 0.8, scores
    assert f"{method}: held-out F1" in capsys.readouterr().out


def test_lightning_example_learns():
    pytest.importorskip("lightning")
    scores = example("lightning_module").main(SMALL["lightning_module.py"])
    assert set(scores) == {"task0", "task1", "task2"}
    assert all(math.isfinite(v) for v in scores.values())
    # predicting 0 costs var(sin 2 pi x) = 0.5 plus the noise; task0's noise sd is 0.1
    assert scores["task0"] < 0.25, scores


# --- the Lightning module's step is the plain loop's step ----------------------------------
def mse_losses(outputs: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
    return {t: F.mse_loss(outputs[t][:, 0], y[:, i]) for i, t in enumerate(outputs)}


def plain_step(model: nn.Module, method: str, x: Tensor, y: Tensor, lr: float) -> None:
    engine = pt.GradientEngine(model, method)
    optimizer = torch.optim.SGD([*model.parameters(), *engine.parameters()], lr=lr)
    optimizer.zero_grad()
    engine.backward(mse_losses(engine.forward(x), y))
    optimizer.step()


@pytest.mark.parametrize("method", ["upgrad", "mgda@repr"])
def test_lightning_step_equals_plain_loop(method):
    L = pytest.importorskip("lightning")
    lightning_module = example("lightning_module")
    lr = 0.5

    class SGDRegressor(lightning_module.MultiTaskRegressor):
        # SGD: the update is the gradient itself (Adam's first step only sees its signs)
        def configure_optimizers(self):
            return torch.optim.SGD([*self.model.parameters(), *self.engine.parameters()], lr=lr)

    x, y = lightning_module.as_tensors(pt.make_hetero(64, 3, seed=0))
    torch.manual_seed(0)
    module = SGDRegressor(("task0", "task1", "task2"), method)
    start = copy.deepcopy(module.model)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=len(x)))
    assert trainer.global_step == 1

    plain = copy.deepcopy(start)
    plain_step(plain, method, x, y, lr)
    summed = copy.deepcopy(start)
    plain_step(summed, "sum", x, y, lr)
    trained = dict(module.model.named_parameters())
    for name, parameter in plain.named_parameters():
        assert_close(trained[name], parameter, msg=name)
    # the step moved the weights, and not as the summed loss moves them
    flat = torch.nn.utils.parameters_to_vector
    assert not torch.equal(flat(module.model.parameters()), flat(start.parameters()))
    assert not torch.allclose(flat(plain.parameters()), flat(summed.parameters()), atol=1e-4)
    # the method's weights and each task's loss are logged
    logged = trainer.callback_metrics
    for task in ("task0", "task1", "task2"):
        assert math.isfinite(float(logged[f"loss/{task}"]))
        assert float(logged[f"weight/{task}"]) > 0


# --- a seed-style client -------------------------------------------------------------------
TASKS = ("amazon", "imdb", "yelp")


class SeedNet(nn.Module):
    """Hand-written multi-task code: a shared trunk and one head per task, routed by id."""

    def __init__(self, vocabulary: int, hidden: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(SparseLinear(vocabulary, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        return self.heads[task_id](self.trunk(x))


class CSRRows(Dataset):
    def __init__(self, data: pt.TaskData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        return csr_batch(self.data.x[indices]), self.data.y[indices].float()


@functools.cache
def seed_data() -> dict[str, pt.TaskData]:
    """Bag-of-words sentiment data, one CSR TaskData per task."""
    texts = {t: example("own_loop").synthetic_sentences(t, 80, seed=1) for t in TASKS}
    vectorizer = CountVectorizer().fit([s for sentences, _ in texts.values() for s in sentences])
    return {t: pt.TaskData(vectorizer.transform(s), y) for t, (s, y) in texts.items()}


def seed_net(seed: int = 0) -> SeedNet:
    torch.manual_seed(seed)
    return SeedNet(seed_data()["amazon"].n_features)


def wrap(net: SeedNet) -> nn.Module:
    return pt.as_multitask(net, TASKS, shared="trunk", route="task_id", keys=range(len(TASKS)))


@pytest.mark.parametrize("method", METHODS)
def test_seed_client_through_trainer(method):
    train, stop, _ = pt.split(seed_data(), (0.6, 0.2, 0.2), shuffle_seed=0)
    monitor = pt.training.GradientMonitor(every=1)
    trainer = pt.Trainer(
        method,
        lr=0.02,
        batch_size=16,
        max_epochs=6,
        patience=None,
        quiet=True,
        device="cpu",
        track_metrics=True,
        callbacks=[monitor],
    )
    tasks = [pt.Task(t, kind="binary") for t in TASKS]
    history = trainer.fit(wrap(seed_net()), tasks, train, stop)

    assert len(history) == 6
    for task in TASKS:
        f1 = history[f"stop_f1/{task}"]
        assert len(f1) == 6 and all(math.isfinite(v) for v in f1)
        assert history.best[f"stop_f1/{task}"] > 0.7, (task, f1)
    frame = monitor.frame()
    assert len(frame) == 6 * 3  # every step: 3 batches of 16 per task (48 rows), round robin
    layers = ["module.trunk.0", *(f"module.heads.{i}" for i in range(len(TASKS)))]
    for layer in layers:
        norms = frame[f"norm/{layer}"]
        assert norms.notna().all() and (norms > 0).all(), layer
    assert {"cos/amazon|imdb", "cos/amazon|yelp", "cos/imdb|yelp"} <= set(frame.columns)


def own_step(
    model: nn.Module, method: str, step: dict[str, tuple[Tensor, Tensor]], lr: float
) -> pt.GradientEngine:
    """One round-robin step of the client's own loop: its own optimizer, the engine's update."""
    engine = pt.GradientEngine(model, method)
    optimizer = torch.optim.SGD([*model.parameters(), *engine.parameters()], lr=lr)
    optimizer.zero_grad()
    losses = {
        task: F.binary_cross_entropy_with_logits(engine.forward(x, task=task)[:, 0], y)
        for task, (x, y) in step.items()
    }
    engine.backward(losses)
    optimizer.step()
    return engine


@pytest.mark.parametrize("method", METHODS)
def test_seed_client_own_loop_equals_multitask_model(method):
    datasets = {t: CSRRows(data) for t, data in seed_data().items()}
    loaders = {
        t: DataLoader(rows, batch_size=16, shuffle=True, collate_fn=rows.collate)
        for t, rows in datasets.items()
    }
    step = next(iter(pt.data.mix_loaders(loaders, "round_robin", seed=3)))
    assert list(step) == list(TASKS)

    net = seed_net()
    start = copy.deepcopy(net)
    reference = pt.MultiTaskModel(
        copy.deepcopy(net.trunk), {t: copy.deepcopy(net.heads[i]) for i, t in enumerate(TASKS)}
    )
    lr = 0.5
    own = own_step(wrap(net), method, step, lr)
    theirs = own_step(reference, method, step, lr)

    pairs = [(net.trunk, reference.trunk)]
    pairs += [(net.heads[i], reference.heads[t]) for i, t in enumerate(TASKS)]
    for mine, other in pairs:
        for (name, a), b in zip(mine.named_parameters(), other.parameters(), strict=True):
            assert_close(a, b, msg=name)
            assert_close(a.grad, b.grad, msg=f"{name}.grad")
    for a, b in zip(own.parameters(), theirs.parameters(), strict=True):  # uw's weights
        assert_close(a, b)
        assert a.abs().max() > 0  # they start at 0 and the optimizer stepped them
    flat = torch.nn.utils.parameters_to_vector
    assert not torch.equal(flat(net.parameters()), flat(start.parameters()))
    if method == "upgrad":  # the exact path's update is that of one backward pass per task
        naive = seed_net()
        own_step(wrap(naive), "upgrad@naive", step, lr)
        assert_close(flat(net.parameters()), flat(naive.parameters()))
    if method == "mgda@repr":  # it runs on the trunk's output, not on the exact Jacobian
        assert own.path == "representation"
        exact = seed_net()
        own_step(wrap(exact), "mgda", step, lr)
        assert not torch.allclose(flat(net.parameters()), flat(exact.parameters()), atol=1e-4)
    if method == "sum":  # and the summed loss is the autograd gradient of the sum
        total = sum(
            F.binary_cross_entropy_with_logits(start(x, i)[:, 0], y)
            for i, (x, y) in enumerate(step.values())
        )
        total.backward()
        for a, b in zip(net.parameters(), start.parameters(), strict=True):
            assert_close(a.grad, b.grad)
