"""Data-parallel fits on real processes: ``torch.distributed.run`` with ``gloo`` on 2 CPU
processes. Two processes on a global batch make the update one process makes on the whole
batch, for loss-level methods with state and every gradient path; the processes stay
identical; one report is written; a crash of one process ends the other."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import polytask as pt
from polytask.engine import gramian, task_jacobian

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from torch import nn
    import polytask as pt
    from polytask.models import DSelectK
    from polytask.training import is_main_process
    from polytask.training._distributed import rank, world_size

    # (name, method, global batch size, data): equal, uneven (13 = 7 + 6) and one-row slices
    # (64 = 3 * 21 + 1), one dataset for every task and one per task
    RUNS = [
        ("mean", "mean", 16, "shared"),
        ("dwa", "dwa", 16, "shared"),
        ("uw", "uw", 13, "shared"),
        ("upgrad@repr", "upgrad@repr", 16, "shared"),
        ("mgda@repr", "mgda@repr", 21, "shared"),
        ("pcgrad", "pcgrad", 13, "shared"),
        ("upgrad@repr per task", "upgrad@repr", 10, "per_task"),
        # Nash-MTL weighs the heads apart from the clipped shared update: two backward passes
        ("nashmtl@repr", "nashmtl@repr", 16, "shared"),
        ("nashmtl@repr per task", "nashmtl@repr", 10, "per_task"),
        ("pcgrad per task", "pcgrad", 10, "per_task"),
        ("dbmtl", "dbmtl", 16, "shared"),  # reads the whole Jacobian: all-reduced
        ("upgrad@repr bf16-mixed", "upgrad@repr", 16, "shared"),
        ("rlw", "rlw", 16, "shared"),  # random weights: drawn alike on every process
        ("famo", "famo", 16, "shared"),
        ("imtl-l", "imtl-l", 16, "shared"),
        ("gradnorm", "gradnorm", 16, "shared"),
        ("mean early stopping", "mean", 16, "shared"),
        # missing labels: a process's slice may hold none of a task that the other's holds
        ("mean masked", "mean", 16, "masked"),
        ("uw masked", "uw", 13, "masked"),
        ("upgrad@repr masked", "upgrad@repr", 16, "masked"),
        ("pcgrad masked", "pcgrad", 16, "masked"),
        ("mean masked share 0", "mean", 21, "masked"),  # 64 = 3 * 21 + 1: a slice of none
        ("mean masked per task share 0", "mean", 21, "masked_per_task"),
        ("mean penalised masked", "mean", 16, "masked"),  # a term and a penalty on every row
        ("mean penalised masked per task", "mean", 10, "masked_per_task"),
        ("mean masked per task", "mean", 10, "masked_per_task"),
        ("dselect-k penalised", "mean", 16, "shared"),  # its penalty sums over the rows
        ("upgrad@repr masked per task", "upgrad@repr", 10, "masked_per_task"),
        ("pcgrad masked per task", "pcgrad", 10, "masked_per_task"),
    ]
    # DWA's weights move from the third epoch (they read the two before); the early-stopping
    # run (a large step) stops on the global stop loss long before its cap
    EPOCHS = {"dwa": 4, "famo": 3, "imtl-l": 3, "gradnorm": 3, "mean early stopping": 60}

    def data(kind):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 5, generator=generator)
        targets = {f"t{i}": (x @ torch.randn(5, generator=generator)) for i in range(3)}
        if kind == "shared":
            return pt.MultiTargetData(x, targets)
        if kind == "masked_per_task":  # t0's data labelled on 3 of its 64 rows
            parts = data("per_task")
            y = parts["t0"].y.clone()
            y[torch.arange(len(y)) % 21 != 0] = float("nan")
            return {**parts, "t0": pt.TaskData(parts["t0"].x, y)}
        if kind == "masked":  # t0 labelled on 3 rows (a step with one: a slice without), t1 on half
            t0, t1 = targets["t0"].clone(), targets["t1"].clone()
            t0[torch.arange(64) % 21 != 0] = float("nan")
            t1[torch.arange(64) % 2 == 1] = float("nan")
            return pt.MultiTargetData(x, {**targets, "t0": t0, "t1": t1})
        return {t: pt.TaskData(x[8 * i :], y[8 * i :]) for i, (t, y) in enumerate(targets.items())}

    def build(seed=0):
        heads = {f"t{i}": nn.Linear(8, 1) for i in range(3)}
        return pt.MultiTaskModel(pt.mlp(5, 8, 2, seed=seed), heads)

    class Penalised(pt.MultiTaskModel):
        def regularization(self, x):  # a mean over the rows each process holds
            return self.trunk(x).square().mean()

    def run(name, method, batch_size, kind):
        torch.manual_seed(0)
        model = build()
        if name.startswith("dselect-k"):  # 3 experts: the penalty on codes without one
            model = DSelectK(5, [f"t{i}" for i in range(3)], n_experts=3, k=2,
                             expert_hidden=[8], entropy_reg=0.1, seed=0)
        elif "penalised" in name:
            model = Penalised(model.trunk, dict(model.heads.items()))
        if "penalised" in name and kind == "masked":  # terms read one dataset's rows
            method = pt.Mean() + pt.Consistency([("t1", "t2")], weight=0.5, distance="squared")
        patience = 1 if name == "mean early stopping" else None
        trainer = pt.Trainer(method, batch_size=batch_size, max_epochs=EPOCHS.get(name, 2),
                             patience=patience, quiet=True, device="cpu",
                             lr=0.1 if patience else 0.01)
        trainer.precision = "bf16-mixed" if name.endswith("bf16-mixed") else "32"
        tasks = [pt.Task(f"t{i}", allow_missing=kind.startswith("masked")) for i in range(3)]
        history = trainer.fit(model, tasks, data(kind), data(kind))
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        return flat, history.records

    if __name__ == "__main__":
        out, mode = sys.argv[1], sys.argv[2]
        if mode == "crash":
            class Crash(pt.Callback):
                def on_epoch_end(self, state, record):
                    if rank() == 1 and state.epoch == 2:
                        raise RuntimeError("rank 1 crashed on purpose")
            model = build()
            pt.Trainer("upgrad", max_epochs=50, patience=None, quiet=True, device="cpu",
                       callbacks=[Crash()]).fit(model, [pt.Task(f"t{i}") for i in range(3)],
                                               data("shared"), data("shared"))
            sys.exit(0)
        results = {name: run(name, method, b, kind) for name, method, b, kind in RUNS}
        # dropout in the trunk: the first training mask each process draws for its 8 rows
        model = build()
        model = pt.MultiTaskModel(nn.Sequential(model.trunk, nn.Dropout(0.5)),
                                  dict(model.heads.items()))
        masks = []
        model.trunk[1].register_forward_hook(
            lambda module, inputs, output: masks.append((output == 0).clone())
            if module.training and not masks else None)
        pt.Trainer("mean", batch_size=16, max_epochs=1, patience=None, quiet=True,
                   device="cpu").fit(model, [pt.Task(f"t{i}") for i in range(3)],
                                     data("shared"), data("shared"))
        # a resumed fit with dropout: each process gets its own RNG stream back
        def dropout_fit(epochs, folder):
            torch.manual_seed(0)  # the heads' initial weights
            model = build()
            model = pt.MultiTaskModel(nn.Sequential(model.trunk, nn.Dropout(0.5)),
                                      dict(model.heads.items()))
            pt.Trainer("mean", batch_size=16, max_epochs=epochs, patience=None, quiet=True,
                       device="cpu", checkpoint=folder).fit(
                model, [pt.Task(f"t{i}") for i in range(3)], data("shared"), data("shared"))
            return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        straight = dropout_fit(3, f"{out}/straight")
        dropout_fit(1, f"{out}/resumed")
        resumed = dropout_fit(3, f"{out}/resumed")
        # how often a process's slice held no label of a task present in the step
        from polytask.training import _losses
        plain_losses, emptied = _losses.LossPlan._losses, []
        def counting(self, model, batch, training):
            here = getattr(batch, "local_counts", None)
            if here is None and hasattr(batch, "parts"):
                here = [part.local_count for part in batch.parts]
            emptied.append(training and here is not None and 0 in here)
            return plain_losses(self, model, batch, training)
        _losses.LossPlan._losses = counting
        run("mean masked", "mean", 16, "masked")
        shared_emptied = sum(emptied)
        run("mean masked per task", "mean", 10, "masked_per_task")
        emptied = [shared_emptied, sum(emptied) - shared_emptied]
        _losses.LossPlan._losses = plain_losses
        refused = {}
        for method, kind in (("pcgrad", "batchnorm"), ("mean", "multilabel")):
            d = data("shared")
            try:
                tasks = [pt.Task(f"t{i}") for i in range(3)]
                if kind == "multilabel":  # a missing entry inside a labelled row
                    y = torch.stack([d.targets["t0"] > 0, d.targets["t1"] > 0], 1).float()
                    y[3, 1] = float("nan")
                    d = pt.MultiTargetData(d.x, {"m": y, "t2": d.targets["t2"]})
                    tasks = [pt.Task("m", kind="multilabel", size=2, allow_missing=True),
                             pt.Task("t2")]
                trainer = pt.Trainer(method, max_epochs=1, quiet=True, device="cpu")
                model = build()
                if kind == "batchnorm":  # running statistics outside DDP's broadcast
                    trunk = nn.Sequential(model.trunk, nn.BatchNorm1d(8))
                    model = pt.MultiTaskModel(trunk, dict(model.heads.items()))
                if kind == "multilabel":
                    heads = {"m": nn.Linear(8, 2), "t2": nn.Linear(8, 1)}
                    model = pt.MultiTaskModel(model.trunk, heads)
                trainer.fit(model, tasks, d, d)
            except ValueError as error:
                refused[f"{method} {kind}"] = str(error)
        # the reducer's collectives: small payloads go by all-gather, large ones by all-reduce
        from polytask.engine._reduce import SMALL_PAYLOAD_BYTES, Reducer
        import torch.distributed as dist
        all_reduces = []
        plain_all_reduce = dist.all_reduce
        dist.all_reduce = lambda t, *a, **k: (all_reduces.append(t.numel()),
                                              plain_all_reduce(t, *a, **k))[1]
        reducer = Reducer()
        small = torch.tensor([rank() + 1.0, -float(rank())])
        large = torch.full((SMALL_PAYLOAD_BYTES // 4 + 1,), rank() + 1.0)
        collectives = {"sum": reducer.sum(small), "max": reducer.maximum(small),
                       "mean": reducer.mean([small, small[:1]]),
                       "max_long": reducer.maximum(torch.tensor([rank(), 5 - rank()])),
                       "small_all_reduces": list(all_reduces),
                       "large": reducer.sum(large), "all_reduces": all_reduces}
        dist.all_reduce = plain_all_reduce
        # losses of other magnitudes on each process: local + (mean - local) is not the mean
        generator = torch.Generator().manual_seed(rank())
        local = (torch.rand(1000, generator=generator) * 30.0 ** rank()).requires_grad_()
        through = reducer.straight_through(local)
        (grad,) = torch.autograd.grad(through.sum(), local)
        collectives["straight"] = (through.detach(), reducer.mean([local.detach()])[0], grad)
        torch.save({"results": results, "refused": refused, "world": world_size(),
                    "emptied": emptied,
                    "mask": masks[0], "resume": (straight, resumed),
                    "collectives": collectives},
                   f"{out}/rank{rank()}.pt")
        if is_main_process():
            with open(f"{out}/report.jsonl", "a") as report:
                report.write(json.dumps({"rank": rank()}) + "\\n")
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--monitor-interval",
        "0.2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(script),
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch of every run; each rank's parameters and history."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "worker.py"
    script.write_text(WORKER)
    done = _torchrun(script, str(folder), "runs", timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return folder, ranks


@pytest.fixture(scope="module")
def worker():
    namespace: dict = {"__name__": "worker"}
    exec(compile(WORKER, "worker", "exec"), namespace)
    return namespace


RUN_NAMES = [
    "mean",
    "dwa",
    "uw",
    "upgrad@repr",
    "mgda@repr",
    "pcgrad",
    "upgrad@repr per task",
    "pcgrad per task",
    "dbmtl",
    "upgrad@repr bf16-mixed",
    "rlw",
    "famo",
    "imtl-l",
    "gradnorm",
    "mean early stopping",
    "mean masked",
    "uw masked",
    "upgrad@repr masked",
    "pcgrad masked",
    "mean masked share 0",
    "mean masked per task share 0",
    "mean penalised masked",
    "mean penalised masked per task",
    "mean masked per task",
    "dselect-k penalised",
    "upgrad@repr masked per task",
    "pcgrad masked per task",
]
STATEFUL = ["dwa", "uw", "famo", "imtl-l", "gradnorm", "dbmtl"]


@pytest.mark.parametrize("name", RUN_NAMES)
def test_two_processes_make_the_update_of_one_on_the_whole_batch(launched, worker, name):
    _, ranks = launched
    assert ranks[0]["world"] == 2
    method, batch_size, kind = next((m, b, k) for n, m, b, k in worker["RUNS"] if n == name)
    alone, alone_history = worker["run"](name, method, batch_size, kind)
    first, first_history = ranks[0]["results"][name]
    second, second_history = ranks[1]["results"][name]
    # the processes hold the very same weights and history ...
    assert torch.equal(first, second)
    assert first_history == second_history
    # ... those of one process on the whole batch, to float summation order (bfloat16's
    # rounding for a bfloat16 forward pass, whose rows are summed in another order)
    tolerance = 1e-2 if name.endswith("bf16-mixed") else 1e-5
    torch.testing.assert_close(first, alone, rtol=tolerance, atol=tolerance / 10)
    for ours, theirs in zip(first_history, alone_history, strict=True):
        for key in ("train_loss", "stop_loss", *[f"weight/t{i}" for i in range(3)]):
            assert ours[key] == pytest.approx(theirs[key], rel=tolerance, abs=1e-6), key
    weights = [[r[f"weight/t{i}"] for i in range(3)] for r in first_history]
    if name in STATEFUL:  # the state moved the weights: the comparison above tested it
        assert weights[-1] != pytest.approx(weights[0], rel=1e-3), weights
    if name == "mean early stopping":  # the same epoch everywhere (the histories' lengths)
        assert 1 < len(first_history) < 60


def test_one_report_is_written_by_rank_zero(launched):
    folder, _ = launched
    lines = (folder / "report.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"rank": 0}]


def test_what_cannot_run_data_parallel_is_refused_with_the_reason(launched):
    _, ranks = launched
    refused = ranks[0]["refused"]
    assert (
        "multilabel tasks with missing entries in labelled rows yet (['m'])"
        in (refused["mean multilabel"])
    )
    assert "buffers ['trunk.1.running_mean'" in refused["pcgrad batchnorm"]


def test_missing_labels_left_some_slices_without_a_task_that_the_step_held(launched):
    """The masked runs above met the case they are for: a process's slice of a step with no
    label of a task the other process's slice labels (its loss there a zero of weight 0), with
    one dataset for every task and with one per task."""
    _, ranks = launched
    assert all(n > 0 for rank in ranks for n in rank["emptied"]), [r["emptied"] for r in ranks]


def test_each_process_draws_its_own_dropout_masks(launched):
    """The global RNG is seeded per rank: the processes' slices of one batch are masked
    independently (the methods' own draws stay alike: see the ``rlw`` run above)."""
    _, ranks = launched
    first, second = ranks[0]["mask"], ranks[1]["mask"]
    assert first.shape == second.shape == (8, 8)
    assert 0 < int(first.sum()) < first.numel() and 0 < int(second.sum()) < second.numel()
    assert not torch.equal(first, second)


def test_a_resumed_fit_gives_each_process_its_own_random_stream_back(launched):
    """With dropout, one epoch then a resume to three equals three epochs straight, on every
    process: the checkpoint holds each process's RNG state, not rank 0's for all."""
    _, ranks = launched
    for rank in ranks:
        straight, resumed = rank["resume"]
        assert torch.equal(straight, resumed)


def test_the_reducers_sums_and_maxima_are_the_processes_on_every_process(launched):
    """Payloads up to SMALL_PAYLOAD_BYTES are reduced from an all-gather (no all-reduce
    runs), larger ones by gloo's all-reduce: both give the reduction over the processes, on
    every process, in the dtype given."""
    _, ranks = launched
    for result in ranks:
        got = result["collectives"]
        assert got["small_all_reduces"] == []  # small payloads went by all-gather
        assert got["all_reduces"] == [got["large"].numel()]  # the large one by all-reduce
        assert got["sum"].tolist() == [3.0, -1.0]
        assert got["max"].tolist() == [2.0, 0.0]
        assert [t.tolist() for t in got["mean"]] == [[1.5, -0.5], [1.5]]
        assert got["max_long"].tolist() == [1, 5] and got["max_long"].dtype == torch.int64
        assert bool((got["large"] == 3.0).all())
    # a loss-level method's state reads the global losses: the same bits on every process
    straight = [result["collectives"]["straight"] for result in ranks]
    for value, mean, grad in straight:
        assert torch.equal(value, mean) and torch.equal(grad, torch.ones_like(grad))
    assert torch.equal(straight[0][0], straight[1][0])


def test_a_crashed_process_ends_the_others_with_an_error(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = _torchrun(script, str(tmp_path), "crash", timeout=90)  # a hang fails the test
    assert done.returncode != 0
    assert "rank 1 crashed on purpose" in done.stderr + done.stdout


def test_summing_the_processes_gramians_misses_the_cross_terms():
    """On the shared parameters every Jacobian entry sums over all rows: the global Jacobian
    is the mean of the processes' (what the exact path all-reduces), and the sum of their own
    Gramians, which misses the cross terms J_1 J_2^T, is a different matrix with different
    weights. On the features, whose rows are disjoint, the summed Gramian is exact. (The
    engine's exact path is held to this by the ``pcgrad`` runs above: an engine that summed
    the processes' own Gramians makes them differ from one process by about 5e-2.)"""
    torch.manual_seed(0)
    model = pt.MultiTaskModel(pt.mlp(4, 6, 2, seed=0), {t: torch.nn.Linear(6, 1) for t in "ab"})
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    shared = list(model.shared_parameters())

    def losses(rows):
        outputs = model(x[rows])
        return torch.stack(
            [((outputs[t][:, 0] - y[rows, i]) ** 2).mean() for i, t in enumerate("ab")]
        )

    whole = gramian(task_jacobian(losses(slice(None)), shared))
    halves = [task_jacobian(losses(rows), shared) for rows in (slice(0, 4), slice(4, 8))]
    mean = [(a + b) / 2 for a, b in zip(*halves, strict=True)]
    torch.testing.assert_close(gramian(mean), whole)
    summed = (gramian(halves[0]) + gramian(halves[1])) / 4
    assert not torch.allclose(summed, whole, rtol=1e-2)
    weighting = pt.UPGrad().make_weighting(2)
    assert not torch.allclose(weighting(summed), weighting(whole), rtol=1e-3)

    def feature_gramian(rows):
        z = model.features(x[rows])
        outputs = model.heads_forward(z)
        values = torch.stack(
            [((outputs[t][:, 0] - y[rows, i]) ** 2).sum() / 8 for i, t in enumerate("ab")]
        )
        rows_grads = [torch.autograd.grad(v, z, retain_graph=True)[0].reshape(-1) for v in values]
        flat = torch.stack(rows_grads)
        return flat @ flat.T

    parts = feature_gramian(slice(0, 4)) + feature_gramian(slice(4, 8))
    torch.testing.assert_close(parts, feature_gramian(slice(None)))


def test_shard_bounds_cover_every_row_once():
    from polytask.training._distributed import shard_bounds

    for n in range(1, 12):
        for world in (1, 2, 3, 5):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_one_process_is_not_distributed():
    from polytask.training import is_main_process
    from polytask.training._distributed import is_distributed

    assert is_main_process() and not is_distributed()
