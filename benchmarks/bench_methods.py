"""Milliseconds per training step of every gradient method, against equal weighting.

Model: a shared MLP trunk (input 64, 4 hidden layers of 256, ReLU) with T linear heads, batch
256, MSE per task, fused Adam. For T in {2, 5, 10, 40}, all in one run:

- equal weighting (``mean``) through polytask: the baseline of every ratio;
- each gradient method through polytask on its default (exact) path, and UPGrad and MGDA on the
  representation path (``@repr``, MGDA-UB);
- torchjd's ``mtl_backward`` + ``jac_to_grad`` with UPGrad;
- the naive path: one ``autograd.grad`` per task, then UPGrad's weights;
- the floor of any exact path: the matrix products of T - 1 more pull-backs through the trunk,
  alone (equal weighting's step plus these);
- the own-loop API on a user's module (``forward(x, task_id)`` wrapped by ``as_multitask``,
  ``engine.forward`` / ``engine.backward`` in a hand-written loop), for UPGrad on both paths:
  printed as its ratio to the same method through the trainer's path (goal: within 5%);
- the solver-bound methods (Nash-MTL, CAGrad, FairGrad, GradVac) on their torch solvers (the
  default) and, named ``<method>:reference``, on torchjd's reference solvers (cvxpy / scipy /
  a Python loop over the pairs): each printed as its ratio to UPGrad's step on the exact path at
  T = 10 and T = 40 (goal: at most 1.15x), the median over the rounds of the per-round ratio
  and its range. ``--methods nashmtl,nashmtl:reference,upgrad,mean`` times the before / after
  alone. The weighting alone (Gramian -> weights, on the model's exact Gramian) of each of
  them and of UPGrad is timed as well (``--solver-calls``; min and median of the calls): on a
  shared machine the minimum shows what the solver costs when nothing else runs.

A step is the forward pass, the objective's backward and the optimizer step, timed with
``time.perf_counter``; the methods take turns in rounds and each gets the median of its steps.
Peak resident memory per method at the largest T is measured in a fresh process each
(``--memory``).

Usage: python benchmarks/bench_methods.py [--tasks 2,5,10,40] [--steps 4] [--rounds 3] [--memory]
       [--methods upgrad,nashmtl,nashmtl:reference,...] [--solver-calls 20]
Last lines: ``nashmtl_T10_vs_upgrad`` (Nash-MTL's step on the torch solver over UPGrad's, exact
path, T = 10), then ``repr_T40_vs_equal``, ``exact_T10_vs_equal`` and, last, the headline
``repr_T10_vs_equal``, for UPGrad (its quadratic programs included); the cost of each path
alone is printed before them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torchjd.aggregation import UPGrad
from torchjd.autojac import jac_to_grad, mtl_backward

import polytask as pt

METHODS = [
    "mean",
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
    "nashmtl:reference",
    "cagrad:reference",
    "fairgrad:reference",
    "gradvac:reference",
]
SOLVER_BOUND = ["nashmtl", "cagrad", "fairgrad", "gradvac"]
"""The methods whose weights come from an iterative solver: compared with UPGrad's step."""
BASELINES = [
    "torchjd mtl_backward",
    "naive per-task backward",
    "path only@exact",
    "path only@repr",
    "extra products only",
    "own loop upgrad",
    "own loop upgrad@repr",
]


class PathOnly(pt.objectives.GradientObjective):
    """Equal weights through a gradient path: what the path itself costs, without a solver."""

    def make_weighting(self, n_tasks: int):
        return lambda gram: torch.full((len(gram),), 1.0 / len(gram), dtype=gram.dtype)


def build(n_tasks: int) -> tuple[pt.MultiTaskModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    trunk = pt.mlp(64, 256, 4, seed=0)
    heads = {f"t{i}": nn.Linear(256, 1) for i in range(n_tasks)}
    return pt.MultiTaskModel(trunk, heads), torch.randn(256, 64), torch.randn(256, n_tasks)


class UserNet(nn.Module):
    """A hand-written multi-task module, routed by an integer task id: the own-loop rows."""

    def __init__(self, trunk: nn.Module, heads: list[nn.Module]) -> None:
        super().__init__()
        self.trunk, self.heads = trunk, nn.ModuleList(heads)

    def forward(self, x: torch.Tensor, task_id: int) -> torch.Tensor:
        return self.heads[task_id](self.trunk(x))


def task_losses(model: pt.MultiTaskModel, x: torch.Tensor, y: torch.Tensor, engine=None):
    """The T losses and what the heads read (the engine's split of the features)."""
    z = model.features(x)
    if engine is not None:
        z = engine.split(z)
    outputs = model.heads_forward(z)
    losses = torch.stack(
        [((outputs[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(y.shape[1])]
    )
    return losses, z


def extra_products(n_tasks: int):
    """The bare matrix products that any exact Jacobian needs beyond equal weighting's own
    backward pass: T - 1 more pull-backs through the trunk (per layer, the weight gradients of
    every task and the signal passed down), as plain ``torch.matmul`` on ready tensors. Equal
    weighting's step plus these is the floor of the exact path on the machine at hand."""
    model, x, _ = build(n_tasks)
    linears = [m for m in model.trunk if isinstance(m, nn.Linear)]
    inputs, h = [], x
    with torch.no_grad():
        for module in model.trunk:
            if isinstance(module, nn.Linear):
                inputs.append(h)
            h = module(h)
    signal = torch.randn(n_tasks - 1, len(x), linears[-1].out_features)

    def step() -> None:
        d = signal
        for depth, (layer, a) in enumerate(zip(linears[::-1], inputs[::-1], strict=True)):
            torch.matmul(d.transpose(1, 2), a)
            if depth + 1 < len(linears):
                d = torch.matmul(d, layer.weight.detach())

    return step


def stepper(method: str, n_tasks: int):
    if method == "extra products only":
        return extra_products(n_tasks)
    model, x, y = build(n_tasks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    shared = model.shared_parameters()
    if method == "torchjd mtl_backward":
        aggregator = UPGrad()
        heads = [list(model.heads[f"t{i}"].parameters()) for i in range(n_tasks)]

        def step() -> None:
            z = model.features(x)
            outputs = model.heads_forward(z)
            losses = [((outputs[f"t{i}"][:, 0] - y[:, i]) ** 2).mean() for i in range(n_tasks)]
            optimizer.zero_grad()
            mtl_backward(losses, features=z, tasks_params=heads, shared_params=shared)
            jac_to_grad(shared, aggregator)
            optimizer.step()

        return step
    if method == "naive per-task backward":
        weighting = pt.make_objective("upgrad")
        weighting.bind([f"t{i}" for i in range(n_tasks)])

        def step() -> None:
            losses, _ = task_losses(model, x, y)
            optimizer.zero_grad()
            rows = [
                torch.cat(
                    [g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]
                )
                for loss in losses
            ]
            jacobian = torch.stack(rows)
            weights = weighting.weights_from_gramian(jacobian @ jacobian.T)
            (weights * losses).sum().backward()
            optimizer.step()

        return step
    if method.startswith("own loop "):
        names = [f"t{i}" for i in range(n_tasks)]
        net = UserNet(model.trunk, [model.heads[t] for t in names])
        user = pt.as_multitask(net, names, shared="trunk", route="task_id", keys=range(n_tasks))
        engine = pt.GradientEngine(user, method.removeprefix("own loop "))
        optimizer = torch.optim.Adam([*net.parameters(), *engine.parameters()], lr=1e-4, fused=True)

        def step() -> None:
            outputs = engine.forward(x)
            losses = {t: ((outputs[t][:, 0] - y[:, i]) ** 2).mean() for i, t in enumerate(names)}
            optimizer.zero_grad()
            engine.backward(losses)
            optimizer.step()

        return step
    if method.startswith("path only@"):
        objective = PathOnly("representation" if method.endswith("repr") else "exact")
    elif method.endswith(":reference"):  # the same method on torchjd's solver
        objective = type(pt.make_objective(method.removesuffix(":reference")))(solver="reference")
    else:
        objective = pt.make_objective(method)
    engine = pt.GradientEngine(model, objective)
    optimizer = torch.optim.Adam([*model.parameters(), *engine.parameters()], lr=1e-4, fused=True)

    def step() -> None:
        losses, z = task_losses(model, x, y, engine)
        optimizer.zero_grad()
        engine.backward(losses, z)
        optimizer.step()
        engine.after_step(lambda: task_losses(model, x, y)[0])

    return step


def time_steps(
    methods: list[str], n_tasks: int, steps: int, rounds: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median ms per step of each method over all its steps, and its median in each round; the
    methods take turns, round after round, so that the machine's drifts hit them alike."""
    steppers = {method: stepper(method, n_tasks) for method in methods}
    for step in steppers.values():
        step()
        step()
    times: dict[str, list[float]] = {method: [] for method in methods}
    per_round: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(rounds):
        for method, step in steppers.items():
            these = []
            for _ in range(steps):
                started = time.perf_counter()
                step()
                these.append(time.perf_counter() - started)
            times[method] += these
            per_round[method].append(statistics.median(these) * 1e3)
    return {method: statistics.median(t) * 1e3 for method, t in times.items()}, per_round


def gramian_of(n_tasks: int) -> torch.Tensor:
    """The exact path's Gramian of the benchmark's model at its initial weights."""
    model, x, y = build(n_tasks)
    losses, _ = task_losses(model, x, y)
    shared = model.shared_parameters()
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)])
        for loss in losses
    ]
    jacobian = torch.stack(rows)
    return (jacobian @ jacobian.T).detach()


def solver_times(methods: list[str], n_tasks: int, calls: int) -> dict[str, tuple[float, float]]:
    """The weighting alone (Gramian -> weights) of each gradient method: (min, median) ms over
    ``calls`` calls on the model's Gramian, the methods taking turns. The minimum is what the
    solver costs on a quiet machine; the step timings above include whatever else runs."""
    gram = gramian_of(n_tasks)
    names = [f"t{i}" for i in range(n_tasks)]
    objectives = {}
    for method in methods:
        if method.endswith(":reference"):
            objective = type(pt.make_objective(method.removesuffix(":reference")))(
                solver="reference"
            )
        else:
            objective = pt.make_objective(method)
        objective.bind(names)
        objective.weights_from_gramian(gram)  # first-call set-up (cvxpy's problem, state)
        objectives[method] = objective
    times: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(calls):
        for method, objective in objectives.items():
            started = time.perf_counter()
            objective.weights_from_gramian(gram)
            times[method].append((time.perf_counter() - started) * 1e3)
    return {m: (min(t), statistics.median(t)) for m, t in times.items()}


def _status(field: str) -> float:
    """A field of /proc/self/status in MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_peak(method: str, n_tasks: int) -> float:
    """Run a few steps; return the peak resident memory above the resident memory before."""
    step = stepper(method, n_tasks)
    step()  # first-call allocations (optimizer state) are not the method's cost
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _status("VmRSS")
    for _ in range(3):
        step()
    return _status("VmHWM") - before


def peak_memory(method: str, n_tasks: int) -> float:
    """Extra peak resident memory (MiB) of a step, in a fresh process."""
    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, 'benchmarks');"
        f"import bench_methods as b; print(b.measure_peak({method!r}, {n_tasks}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2,5,10,40")
    parser.add_argument("--steps", type=int, default=4, help="steps per method and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS + BASELINES))
    parser.add_argument("--memory", action="store_true", help="peak memory at the largest T")
    parser.add_argument(
        "--solver-calls",
        type=int,
        default=20,
        help="calls of each solver-bound method's weighting alone, on the model's Gramian "
        "(0: skip)",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # solver chatter (cvxpy) is not a result
    task_counts = [int(t) for t in args.tasks.split(",")]
    methods = args.methods.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; trunk 64 -> 4 x 256, "
        f"batch 256; ms per step (ratio to equal weighting)"
    )
    table: dict[str, dict[int, float]] = {method: {} for method in methods}
    rounds: dict[str, dict[int, list[float]]] = {method: {} for method in methods}
    for n_tasks in task_counts:
        medians, per_round = time_steps(methods, n_tasks, args.steps, args.rounds)
        for method, ms in medians.items():
            table[method][n_tasks] = ms
            rounds[method][n_tasks] = per_round[method]
    header = f"{'method':26s}" + "".join(f"{'T=' + str(t):>18s}" for t in task_counts)
    print(header)
    equal = table["mean"]
    for method, row in table.items():
        cells = "".join(f"{row[t]:9.1f} ({row[t] / equal[t]:5.2f}x)" for t in task_counts)
        print(f"{method:26s}{cells}")
    if args.memory:
        largest = max(task_counts)
        print(f"\npeak resident memory of a step above the model's, T={largest} (MiB):")
        for method in methods:
            print(f"  {method:26s} {peak_memory(method, largest):8.1f}")
    ratio = {m: {t: table[m][t] / equal[t] for t in task_counts} for m in table}
    if {"path only@exact", "path only@repr"} <= set(ratio):
        for path in ("exact", "repr"):
            cells = ", ".join(f"T={t}: {ratio[f'path only@{path}'][t]:.2f}x" for t in task_counts)
            print(f"{path} path alone (equal weights, no solver): {cells}")
    if "extra products only" in ratio:
        cells = ", ".join(f"T={t}: {1 + ratio['extra products only'][t]:.2f}x" for t in task_counts)
        print(f"exact path floor (equal weighting + the extra products alone): {cells}")
    for method in ("upgrad", "upgrad@repr"):
        if {method, f"own loop {method}"} <= set(ratio):
            cells = ", ".join(
                f"T={t}: {table[f'own loop {method}'][t] / table[method][t]:.3f}x"
                for t in task_counts
            )
            print(f"own loop on a user's module vs the trainer's path, {method}: {cells}")
    compared = [t for t in (10, 40) if t in task_counts]
    if "upgrad" in table and compared:
        print(
            "solver-bound methods vs UPGrad, exact path (median of the per-round ratios [range]):"
        )
        for base in SOLVER_BOUND:
            for method in (base, f"{base}:reference"):
                if method not in table:
                    continue
                cells = []
                for t in compared:
                    per = [
                        m / u for m, u in zip(rounds[method][t], rounds["upgrad"][t], strict=True)
                    ]
                    cells.append(
                        f"T={t}: {table[method][t]:.1f} ms vs {table['upgrad'][t]:.1f} ms, "
                        f"{statistics.median(per):.2f}x [{min(per):.2f}-{max(per):.2f}]"
                    )
                print(f"  {method:20s} " + "; ".join(cells))
    solvers = [m for m in methods if m.split(":")[0] in [*SOLVER_BOUND, "upgrad"]]
    solvers = [m for m in solvers if "@" not in m]
    if args.solver_calls and "upgrad" in solvers and compared:
        print("the weighting alone on the model's exact Gramian, ms (min / median of calls):")
        alone = {t: solver_times(solvers, t, args.solver_calls) for t in compared}
        for method in solvers:
            cells = "; ".join(
                f"T={t}: {alone[t][method][0]:.2f} / {alone[t][method][1]:.2f}" for t in compared
            )
            print(f"  {method:20s} {cells}")
    if {"nashmtl", "upgrad"} <= set(table) and 10 in task_counts:
        per = [m / u for m, u in zip(rounds["nashmtl"][10], rounds["upgrad"][10], strict=True)]
        print(f"nashmtl_T10_vs_upgrad: {statistics.median(per):.2f}")
    if {"upgrad", "upgrad@repr"} <= set(ratio) and {10, 40} <= set(task_counts):
        print(f"repr_T40_vs_equal: {ratio['upgrad@repr'][40]:.2f}")
        print(f"exact_T10_vs_equal: {ratio['upgrad'][10]:.2f}")
        print(f"repr_T10_vs_equal: {ratio['upgrad@repr'][10]:.2f}")  # the headline, last


if __name__ == "__main__":
    main()
