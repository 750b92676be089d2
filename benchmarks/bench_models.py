"""Milliseconds per training step of the sharing architectures.

1. MMoE with 8 experts run as one batched product (:class:`polytask.models.BatchedExperts`,
   the default) against the same 8 experts run one after the other in a Python loop
   (``BatchedExperts.unbatched()``, an :class:`polytask.models.ExpertList`: the usual
   implementation): the loop's experts are copies of the batched ones (their outputs are
   checked equal first), the gates and towers are the same, batch 256, 100 inputs (the census
   experiment's width), two binary tasks. Also timed: the experts alone (forward and backward
   of the experts module, the only part that differs), where the gap is not diluted by the
   gates, towers, loss and optimizer that both variants share.
2. Each architecture of the census experiment (``build_architecture``: shared-bottom, MMoE, CGC,
   PLE, cross-stitch, DSelect-k, all at about the parameter count of shared-bottom) against
   shared-bottom.

A step is forward, the mean of the two tasks' logistic losses, backward and a fused Adam step.
Rounds alternate the variants (which one goes first alternates too) so that drifts of a shared
machine hit both alike; each round times ``--steps`` steps after two warm-up steps. The ratio
of each round is compared: the median and its spread (min-max and interquartile range) over
rounds. One torch thread by default (``--threads``). Time is this process's CPU time, which
other processes on a shared machine do not inflate (with one thread it is the step's compute);
``--wall`` times the wall clock instead.

Usage: python benchmarks/bench_models.py [--rounds 15] [--steps 40] [--threads 1] [--wall]
Last line: ``mmoe_batched_vs_loop: X`` (loop ms / batched ms; goal at least 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from _rounds import in_turn, spread
from polytask.experiments._census import MULTI_TASK_MODELS, build_architecture, n_parameters
from polytask.models import MMoE

IN_FEATURES, BATCH, N_EXPERTS, UNITS = 100, 256, 8, 16
TASKS = {"income": 1, "never_married": 1}


def mmoe_pair() -> tuple[nn.Module, nn.Module]:
    """MMoE with batched experts, and the same model with its experts in a Python loop."""
    batched = MMoE(IN_FEATURES, TASKS, n_experts=N_EXPERTS, expert_hidden=[UNITS], seed=0)
    looped = MMoE(IN_FEATURES, TASKS, n_experts=N_EXPERTS, expert_hidden=[UNITS], seed=0)
    looped.experts = batched.experts.unbatched()  # copies of the same experts
    looped.load_state_dict(
        {k: v for k, v in batched.state_dict().items() if not k.startswith("experts.")},
        strict=False,
    )
    x = torch.randn(64, IN_FEATURES, generator=torch.Generator().manual_seed(1))
    for task in TASKS:
        torch.testing.assert_close(batched(x, task=task), looped(x, task=task))
    return batched, looped


def stepper(model: nn.Module, x: torch.Tensor, y: dict[str, torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        outputs = model(x)
        loss = sum(loss_fn(outputs[t].squeeze(-1), y[t]) for t in TASKS) / len(TASKS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


CLOCK = time.process_time  # --wall: time.perf_counter


def experts_stepper(experts: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward and backward of the experts module alone."""

    def step() -> None:
        experts.zero_grad(set_to_none=True)
        experts(x).square().mean().backward()

    return step


def ms_per_step(step: Callable[[], None], steps: int) -> float:
    for _ in range(2):
        step()
    started = CLOCK()
    for _ in range(steps):
        step()
    return 1000 * (CLOCK() - started) / steps


def alternate(
    first: Callable[[], None], second: Callable[[], None], rounds: int, steps: int
) -> tuple[list[float], list[float]]:
    """ms per step of each, round by round, the order alternating."""
    times: dict[Callable[[], None], list[float]] = {first: [], second: []}
    for r in range(rounds):
        for step in in_turn(r, (first, second)):
            times[step].append(ms_per_step(step, steps))
    return times[first], times[second]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="wall clock, not CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, IN_FEATURES, generator=generator)
    y = {t: torch.randint(0, 2, (BATCH,), generator=generator).float() for t in TASKS}
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {BATCH}, {IN_FEATURES} "
        f"inputs, {args.rounds} alternating rounds of {args.steps} steps, "
        f"{'wall-clock' if args.wall else 'CPU'} time"
    )

    batched, looped = mmoe_pair()
    fast, slow = alternate(stepper(batched, x, y), stepper(looped, x, y), args.rounds, args.steps)
    ratios = [s / f for s, f in zip(slow, fast, strict=True)]
    print(f"\nMMoE, {N_EXPERTS} experts of {UNITS} units ({n_parameters(batched)} parameters)")
    print(f"  batched experts:   {statistics.median(fast):.3f} ms/step (median)")
    print(f"  per-expert loop:   {statistics.median(slow):.3f} ms/step (median)")
    print(f"  loop / batched:    median {statistics.median(ratios):.2f} ({spread(ratios)})")
    fast_e, slow_e = alternate(
        experts_stepper(batched.experts, x),
        experts_stepper(looped.experts, x),
        args.rounds,
        args.steps,
    )
    experts_ratios = [s / f for s, f in zip(slow_e, fast_e, strict=True)]
    print(
        f"  experts alone (forward + backward): batched {statistics.median(fast_e):.3f} ms, "
        f"loop {statistics.median(slow_e):.3f} ms, loop / batched median "
        f"{statistics.median(experts_ratios):.2f} ({spread(experts_ratios)})"
    )

    print("\nEach architecture against shared-bottom (census sizes, matched parameter counts)")
    print(f"  {'model':14s} {'parameters':>10s} {'ms/step':>8s} {'x shared-bottom':>16s}  spread")
    base = build_architecture("shared-bottom", IN_FEATURES, TASKS)
    for name in MULTI_TASK_MODELS:
        model = build_architecture(name, IN_FEATURES, TASKS)
        rounds = max(3, args.rounds // 2)
        own, ref = alternate(stepper(model, x, y), stepper(base, x, y), rounds, args.steps)
        relative = [o / r for o, r in zip(own, ref, strict=True)]
        print(
            f"  {name:14s} {n_parameters(model):10d} {statistics.median(own):8.3f} "
            f"{statistics.median(relative):16.2f}  {spread(relative)}"
        )
    print(f"\nmmoe_batched_vs_loop: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
