"""Examples per second: a per-row densifying Dataset against polytask's batch path.

Data: a CSR matrix of 25,000 x 20,000 bag-of-words counts with about 150 non-zeros per row.

- Baseline: a torch ``Dataset`` whose ``__getitem__`` densifies one row
  (``X[idx].astype(np.int8).todense()``), served by a ``DataLoader`` of batch 64 - the common
  hand-written set-up.
- polytask: ``TaskData`` slices 64 CSR rows at once and wraps them as a torch sparse tensor
  (or, second figure, densifies the sliced batch).

Both are timed for loading alone and for a full training step of a
``Linear(20000, 200) -> ReLU -> Linear(200, 1)`` binary classifier. The baseline uses
``nn.Linear`` on the densified batches; polytask feeds the CSR batch to ``SparseLinear`` (the
same function, computed with ``embedding_bag``) through ``Trainer.fit`` (one epoch). Both use
fused Adam for the headline ratio, so it measures the data path and the layer, not the
optimizer; the baseline with PyTorch's default Adam is printed too.

Rounds alternate the two sides (which one goes first alternates too); each round's ratio is
kept, and the median over rounds is printed with its spread.

Usage: python benchmarks/bench_sparse.py [--rows 25000] [--steps 60] [--rounds 5]
Last lines: ``sparse_loading_speedup: X`` then ``train_step_speedup: Y`` (the headline).
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import polytask as pt
from _rounds import in_turn, spread
from polytask.data import TaskData

BATCH = 64


def make_matrix(rows: int, cols: int, per_row: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, cols, size=rows * per_row)
    data = rng.integers(1, 4, size=rows * per_row).astype(np.float32)
    indptr = np.arange(0, rows * per_row + 1, per_row)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(rows, cols))
    matrix.sum_duplicates()
    return matrix


class PerRowDataset(Dataset):
    """The baseline: one densified row per item."""

    def __init__(self, x: sp.csr_matrix, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = np.asarray(self.x[idx].astype(np.int8).todense())[0]
        return torch.from_numpy(row), torch.tensor(self.y[idx])


def classifier(cols: int, first: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(first or nn.Linear(cols, 200), nn.ReLU(), nn.Linear(200, 1))


def loader_rate(x: sp.csr_matrix, y: np.ndarray, steps: int) -> float:
    loader = DataLoader(PerRowDataset(x, y), batch_size=BATCH, shuffle=True)
    started, seen = time.perf_counter(), 0
    for i, (xb, _) in enumerate(loader):
        seen += len(xb)
        if i + 1 == steps:
            break
    return seen / (time.perf_counter() - started)


def batch_rate(data: TaskData, steps: int, sparse_tensor: bool) -> float:
    order = np.random.default_rng(0).permutation(len(data))
    started, seen = time.perf_counter(), 0
    for i in range(steps):
        index = order[i * BATCH : (i + 1) * BATCH]
        seen += data.inputs(index, sparse_tensor=sparse_tensor).shape[0]
    return seen / (time.perf_counter() - started)


def loader_train_rate(x: sp.csr_matrix, y: np.ndarray, steps: int, fused: bool) -> float:
    model = classifier(x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    loader = DataLoader(PerRowDataset(x, y), batch_size=BATCH, shuffle=True)
    started, seen = time.perf_counter(), 0
    for i, (xb, yb) in enumerate(loader):
        loss = nn.functional.binary_cross_entropy_with_logits(model(xb.float())[:, 0], yb.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(xb)
        if i + 1 == steps:
            break
    return seen / (time.perf_counter() - started)


def trainer_train_rate(x: sp.csr_matrix, y: np.ndarray, steps: int) -> float:
    rows = steps * BATCH
    train = {"sentiment": TaskData(x[:rows], y[:rows])}
    stop = {"sentiment": TaskData(x[rows : rows + BATCH], y[rows : rows + BATCH])}
    net = classifier(x.shape[1], pt.models.SparseLinear(x.shape[1], 200))
    model = pt.MultiTaskModel(net[:2], {"sentiment": net[2]})
    trainer = pt.Trainer(
        "sum", lr=1e-3, batch_size=BATCH, max_epochs=1, patience=None, quiet=True, device="cpu"
    )
    started = time.perf_counter()
    trainer.fit(model, [pt.Task("sentiment", kind="binary")], train, stop)
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--cols", type=int, default=20000)
    parser.add_argument("--per-row", type=int, default=150)
    parser.add_argument("--steps", type=int, default=60, help="batches timed per setting")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()
    x = make_matrix(args.rows, args.cols, args.per_row)
    y = (np.random.default_rng(1).uniform(size=args.rows) < 0.5).astype(np.float32)
    data = TaskData(x, y)
    print(
        f"CSR {x.shape[0]} x {x.shape[1]}, {x.nnz / x.shape[0]:.0f} non-zeros per row; "
        f"batch {BATCH}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    # rounds alternate the two sides (and which goes first), so that drifts of a shared machine
    # hit both alike; the ratio of each round is kept: median and spread over rounds
    loading = {
        "loop": lambda: loader_rate(x, y, args.steps),
        "ours": lambda: batch_rate(data, args.steps * 10, sparse_tensor=True),
    }
    training = {
        "loop": lambda: loader_train_rate(x, y, args.steps, fused=True),
        "ours": lambda: trainer_train_rate(x, y, args.steps),
    }
    load_ratios, step_ratios, rates = [], [], {"loop": [], "ours": [], "default": []}
    for r in range(args.rounds):
        load = {side: loading[side]() for side in in_turn(r, ("loop", "ours"))}
        load_ratios.append(load["ours"] / load["loop"])
        train = {side: training[side]() for side in in_turn(r, ("loop", "ours"))}
        rates["loop"].append(train["loop"])
        rates["ours"].append(train["ours"])
        step_ratios.append(train["ours"] / train["loop"])
    rates["default"].append(loader_train_rate(x, y, args.steps, fused=False))
    dense = batch_rate(data, args.steps * 10, sparse_tensor=False)
    print(f"loading, polytask CSR batch -> dense: {dense:12,.0f} examples/s (one round)")
    print(f"training, per-row loop, default Adam: {rates['default'][0]:12,.0f} examples/s")
    print(f"training, per-row loop, fused Adam:   {median(rates['loop']):12,.0f} examples/s")
    print(f"training, polytask Trainer (sparse):  {median(rates['ours']):12,.0f} examples/s")
    loading_summary = f"median {median(load_ratios):.1f} ({spread(load_ratios)})"
    print(f"loading speedup, {args.rounds} rounds: {loading_summary}")
    print(
        f"train step speedup, {args.rounds} rounds: median {median(step_ratios):.2f} "
        f"({spread(step_ratios)})"
    )
    print(f"sparse_loading_speedup: {median(load_ratios):.1f}")
    print(f"train_step_speedup: {median(step_ratios):.2f}")


if __name__ == "__main__":
    main()
