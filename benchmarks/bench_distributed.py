"""Milliseconds per data-parallel training step on 2 ``gloo`` processes, against equal weighting.

Model: the shared MLP of ``bench_methods.py`` (input 64, 4 hidden layers of 256, ReLU) with
T = 10 linear heads, global batch 256 (128 rows per process), MSE per task, fused Adam, through
:class:`polytask.Trainer` started by ``torch.distributed.run`` (the script relaunches itself).
Methods: equal weighting (``mean``: DDP's gradient all-reduce only), ``upgrad@repr`` (DDP's
all-reduce plus one reduction of the T x T Gramian with the heads' gradients, 10.7 KB at
T = 10, which gloo does as an all-gather) and ``upgrad`` on the exact path (the T x P Jacobian
reduce-scattered, the shards' Gramians summed, the update's shards gathered).

A step is timed from one ``on_step_end`` callback to the next (forward, the method's
backward and its collectives, the optimizer step); the methods take turns in rounds, each fit
one epoch of ``--steps`` steps (the first two of each are left out; the order of the methods
alternates between rounds). Each round gives each method the median of its steps and its ratio
to equal weighting's median in the same round; printed: the median of the rounds' ratios and
their spread (min-max and interquartile range). Bytes per step are
those each process sends, counted as ring algorithms send them (an all-reduce of n bytes sends
2 n (W - 1) / W; a reduce-scatter or all-gather of n bytes in all, n (W - 1) / W): the
engine's collectives (counted by its reducer) plus DDP's gradient all-reduce.

Usage: python benchmarks/bench_distributed.py [--steps 30] [--rounds 9] [--tasks 10]
Last line: ``ddp_repr_T10_vs_equal: X`` (goal: at most 1.3).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import polytask as pt
from _rounds import in_turn, spread
from polytask.training import is_main_process

METHODS = ["mean", "upgrad@repr", "upgrad"]


class StepClock(pt.Callback):
    """Seconds between consecutive steps' ends, and the bytes the engine all-reduced."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.engine_bytes = 0
        self.steps = 0
        self._last: float | None = None
        self._start_bytes = 0
        self.ddp_bytes = 0

    def on_fit_start(self, state) -> None:
        engine = state.engine
        reducer = engine.reducer
        self._start_bytes = 0 if reducer is None else reducer.bytes
        # DDP all-reduces every parameter's gradient, or the shared ones' ("ddp_shared")
        mode = engine.parallel_mode
        params = list(state.model.parameters()) if mode == "ddp" else []
        if mode == "ddp_shared":
            params = list(state.model.shared_parameters())
        world = engine.reducer.world
        payload = sum(p.numel() * p.element_size() for p in params)
        self.ddp_bytes = 2 * payload * (world - 1) // world  # a ring all-reduce sends this

    def on_step_end(self, state) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now
        self.steps += 1
        reducer = state.engine.reducer
        if reducer is not None:
            self.engine_bytes = reducer.bytes - self._start_bytes


def build(n_tasks: int) -> pt.MultiTaskModel:
    trunk = pt.mlp(64, 256, 4, seed=0)
    return pt.MultiTaskModel(trunk, {f"t{i}": nn.Linear(256, 1) for i in range(n_tasks)})


def data(n_tasks: int, rows: int) -> pt.MultiTargetData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 64, generator=generator)
    return pt.MultiTargetData(
        x, {f"t{i}": torch.randn(rows, generator=generator) for i in range(n_tasks)}
    )


def one_fit(method: str, n_tasks: int, steps: int) -> tuple[list[float], float]:
    """Step times (s) of one epoch of ``steps`` steps, and bytes all-reduced per step."""
    model = build(n_tasks)
    tasks = [pt.Task(f"t{i}") for i in range(n_tasks)]
    clock = StepClock()
    trainer = pt.Trainer(
        method,
        batch_size=256,
        max_epochs=1,
        patience=None,
        quiet=True,
        device="cpu",
        callbacks=[clock],
        eval_batch_size=256,
    )
    trainer.fit(model, tasks, data(n_tasks, 256 * steps), data(n_tasks, 256))
    return clock.times[1:], clock.engine_bytes / max(clock.steps, 1) + clock.ddp_bytes


def worker(args: argparse.Namespace) -> None:
    medians: dict[str, list[float]] = {m: [] for m in METHODS}
    sent: dict[str, float] = {}
    for r in range(args.rounds):
        for method in in_turn(r, METHODS):
            steps, per_step = one_fit(method, args.tasks, args.steps)
            medians[method].append(statistics.median(steps))
            sent[method] = per_step
    if not is_main_process():
        return
    print(
        f"2 gloo processes, T={args.tasks}, global batch 256, {args.rounds} rounds x "
        f"{args.steps} steps, {os.environ.get('OMP_NUM_THREADS', '?')} thread(s) each"
    )
    equal = medians["mean"]
    ratios = {m: [o / e for o, e in zip(medians[m], equal, strict=True)] for m in METHODS}
    for method in METHODS:
        ms, ratio = 1e3 * statistics.median(medians[method]), statistics.median(ratios[method])
        print(
            f"{method:12s} {ms:8.2f} ms/step (median of rounds)  x{ratio:5.2f} of equal "
            f"({spread(ratios[method])})  {sent[method] / 1e6:7.3f} MB sent/step"
        )
    print(
        f"exact path: x{statistics.median(ratios['upgrad']):.2f} of equal weighting, "
        f"{sent['upgrad'] / 1e6:.3f} MB/step against {sent['mean'] / 1e6:.3f} MB/step"
    )
    print(f"ddp_repr_T{args.tasks}_vs_equal: {statistics.median(ratios['upgrad@repr']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        __file__,
        "--worker",
        f"--steps={args.steps}",
        f"--rounds={args.rounds}",
        f"--tasks={args.tasks}",
    ]
    sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
