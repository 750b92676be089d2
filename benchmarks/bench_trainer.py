"""Seconds per epoch: polytask's Trainer against a plain hand-written PyTorch loop.

Both train the heteroscedastic experiment's model (1 -> 10 x Dense(100, ReLU) -> 5, Glorot
init) on the same data, batch size, epochs and seed, with the same optimizer (fused
Adam(lr=1e-3, eps=1e-3), as the Trainer uses) on the mean squared error, and both evaluate the
stop set after every epoch and keep the best weights, as early stopping needs. Rounds
alternate the two (and which goes first) so that drifts of the machine hit both alike; each
round compares the median epoch times of one fit of each, and the median of the rounds' ratios
is printed with its spread. If Keras 3 is installed, ``polytask.keras`` is timed through
``model.fit`` (torch backend) too.

Usage: python benchmarks/bench_trainer.py [--epochs 20] [--rounds 12] [--n 20000]
Last line: ``trainer_vs_plain_loop: R`` (R < 1 means the Trainer is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

import polytask as pt
from _rounds import in_turn, spread


def build(n_tasks: int) -> pt.MultiTaskModel:
    names = pt.data.task_names(n_tasks)
    net = pt.mlp(1, 100, 10, out_features=n_tasks, seed=0)
    return pt.MultiTaskModel(net[:-1], pt.ColumnHeads(net[-1], {t: 1 for t in names}))


class _TimedBestWeights(pt.training.BestWeights):
    """The trainer's best-weights bookkeeping, which runs last in an epoch, stamping the end of
    each epoch: an epoch's time is then everything the fit does in it (batches, stop-set
    evaluation, records and every callback), as the plain loop's time is."""

    def on_fit_start(self, state) -> None:
        super().on_fit_start(state)
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def on_epoch_end(self, state, record) -> None:
        super().on_epoch_end(state, record)
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def time_trainer(data: pt.MultiTargetData, epochs: int, batch_size: int) -> list[float]:
    train, stop, _ = pt.split(data)
    model = build(len(data.task_names))
    timer = _TimedBestWeights()
    trainer = pt.Trainer(
        "mean",
        eps=1e-3,
        batch_size=batch_size,
        max_epochs=epochs,
        patience=None,
        quiet=True,
        device="cpu",
        callbacks=[timer],
    )
    trainer.fit(model, pt.regression_tasks(list(data.task_names)), train, stop)
    return timer.seconds


def time_plain_loop(data: pt.MultiTargetData, epochs: int, batch_size: int) -> list[float]:
    train, stop, _ = pt.split(data)
    names = data.task_names
    x, y = train.x, torch.stack([train.targets[t] for t in names], dim=1)
    x_stop, y_stop = stop.x, torch.stack([stop.targets[t] for t in names], dim=1)
    net = pt.mlp(1, 100, 10, out_features=len(names), seed=0)
    # the same optimizer as the Trainer (fused Adam), so the ratio measures the loop itself
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    best, best_state, seconds = float("inf"), None, []
    for _ in range(epochs):
        started = time.perf_counter()
        net.train()
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = nn.functional.mse_loss(net(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            stop_loss = nn.functional.mse_loss(net(x_stop), y_stop).item()
        if stop_loss < best:
            best = stop_loss
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        seconds.append(time.perf_counter() - started)
    net.load_state_dict(best_state)
    return seconds


def time_keras(data: pt.MultiTargetData, epochs: int, batch_size: int) -> list[float] | None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras

        from polytask import keras as ptk
    except ImportError:
        return None
    train, stop, _ = pt.split(data)
    names = data.task_names
    y = torch.stack([train.targets[t] for t in names], 1).numpy()
    y_stop = torch.stack([stop.targets[t] for t in names], 1).numpy()
    keras.utils.set_random_seed(0)
    layers = [keras.Input((1,))]
    layers += [keras.layers.Dense(100, activation="relu") for _ in range(10)]
    layers += [keras.layers.Dense(len(names))]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-3), loss=ptk.Mean())

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    model.fit(
        train.x.numpy(),
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        validation_data=(stop.x.numpy(), y_stop),
        callbacks=[timer],
    )
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    data = pt.make_hetero(args.n, seed=0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, n={args.n}, "
        f"train rows={round(args.n * 0.05)}, batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.rounds} alternating rounds"
    )
    runs = {"plain": time_plain_loop, "trainer": time_trainer}
    medians: dict[str, list[float]] = {"plain": [], "trainer": []}
    for round_ in range(args.rounds):
        # alternate which goes first, so that drifts of the machine hit both alike; the first
        # epoch of each fit warms caches up and is left out
        for name in in_turn(round_, ("plain", "trainer")):
            seconds = runs[name](data, args.epochs, args.batch_size)[1:]
            medians[name].append(statistics.median(seconds) * 1e3)
    ratios = [t / p for t, p in zip(medians["trainer"], medians["plain"], strict=True)]
    for name, label in (("plain", "plain loop:      "), ("trainer", "polytask Trainer:")):
        each = ", ".join(f"{m:.1f}" for m in medians[name])
        print(f"{label} {statistics.median(medians[name]):8.1f} ms/epoch (rounds: {each})")
    median = statistics.median(ratios)
    print(f"Trainer / plain loop per round: median {median:.2f} ({spread(ratios)})")
    keras_seconds = time_keras(data, max(3, args.epochs // 3), args.batch_size)
    if keras_seconds is not None:
        keras_ms = statistics.median(keras_seconds[1:]) * 1e3
        plain_ms = statistics.median(medians["plain"])
        print(f"keras model.fit:  {keras_ms:8.1f} ms/epoch (polytask.keras.Mean, torch backend)")
        print(f"keras_vs_plain_loop: {keras_ms / plain_ms:.2f}")
    print(f"trainer_vs_plain_loop: {median:.2f}")


if __name__ == "__main__":
    main()
