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

Usage: python benchmarks/bench_sparse.py [--rows 25000] [--steps 60]
Last lines: ``train_step_speedup: Y`` then ``sparse_loading_speedup: X``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import polytask as pt
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
    args = parser.parse_args()
    x = make_matrix(args.rows, args.cols, args.per_row)
    y = (np.random.default_rng(1).uniform(size=args.rows) < 0.5).astype(np.float32)
    data = TaskData(x, y)
    print(
        f"CSR {x.shape[0]} x {x.shape[1]}, {x.nnz / x.shape[0]:.0f} non-zeros per row; "
        f"batch {BATCH}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    per_row = loader_rate(x, y, args.steps)
    sparse = batch_rate(data, args.steps * 10, sparse_tensor=True)
    dense = batch_rate(data, args.steps * 10, sparse_tensor=False)
    print(f"loading, per-row Dataset + DataLoader: {per_row:12,.0f} examples/s")
    print(
        f"loading, polytask CSR batch -> sparse:  {sparse:12,.0f} examples/s "
        f"({sparse / per_row:.0f}x)"
    )
    print(
        f"loading, polytask CSR batch -> dense:   {dense:12,.0f} examples/s "
        f"({dense / per_row:.0f}x)"
    )
    default = loader_train_rate(x, y, args.steps, fused=False)
    loop = loader_train_rate(x, y, args.steps, fused=True)
    ours = trainer_train_rate(x, y, args.steps)
    print(f"training, per-row loop, default Adam:   {default:12,.0f} examples/s")
    print(f"training, per-row loop, fused Adam:     {loop:12,.0f} examples/s")
    print(
        f"training, polytask Trainer (sparse):    {ours:12,.0f} examples/s "
        f"({ours / default:.1f}x the default loop)"
    )
    print(f"train_step_speedup: {ours / loop:.2f}")
    print(f"sparse_loading_speedup: {sparse / per_row:.1f}")


if __name__ == "__main__":
    main()
