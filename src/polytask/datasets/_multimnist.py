"""MultiMNIST: two overlaid digits per image, the upper-left one's class and the lower-right one's
class as two 10-class tasks (Sener & Koltun 2018), built from a 5,000-image MNIST subset.

Each base digit (28 x 28) is placed on a 36 x 36 canvas, the left one in the top-left corner and
the right one in the bottom-right corner (each shifted 4 px from the centre, so they overlap in a
20 x 20 square); the two are combined by their pixel-wise maximum and the canvas is
average-pooled 2 x 2 to 18 x 18 (so one fit stays within seconds on one CPU core). Pixels are
scaled to [0, 1]. The 5,000 base digits are first split by ``seed`` into disjoint pools (60 / 20 /
20 % for train / stop / test) and pairs are drawn within each pool only, so no test image
contains a digit image seen in training.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import MultiTargetData
from ..models import MultiTaskModel
from ..tasks import Task
from ._spec import DataFormatError, DatasetSpec, Splits

FILE = "mnist_5k.csv.gz"
ROWS = 5000
SIDE = 28  # a base digit is SIDE x SIDE
FIELDS = SIDE * SIDE + 1  # the pixels row by row, then the label
CANVAS = 36
SHIFT = CANVAS - SIDE  # the right digit's offset; the left digit sits at (0, 0)
POOL = 2  # average-pooling factor: 36 x 36 -> 18 x 18
FRACTIONS = (0.6, 0.2, 0.2)  # train / stop / test shares of the base digits
PAIRS_PER_DIGIT = 2  # pairs drawn per base digit of a pool: 6,000 / 2,000 / 2,000 pairs
SPLITS = ("train", "stop", "test")
TASKS = (
    Task("left", kind="multiclass", size=10, metrics=("accuracy", "macro_f1")),
    Task("right", kind="multiclass", size=10, metrics=("accuracy", "macro_f1")),
)


def _fail(path: Path, line: int, column: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{path}, line {line}, column {column}: {problem}")


def _column(index: int) -> str:
    """The 1-based column number and what it holds, for error messages."""
    what = "label" if index == FIELDS - 1 else f"pixel {index}"
    return f"{index + 1} ({what})"


@lru_cache(maxsize=2)
def _read_cached(path: Path, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    del mtime_ns, size  # only part of the cache key: a changed file is read again
    rows: list[np.ndarray] = []
    number = 0
    try:
        with gzip.open(path, "rt", encoding="ascii", newline="") as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.rstrip("\r\n").split(",")
                if len(fields) != FIELDS:
                    raise _fail(
                        path,
                        number,
                        # the first missing field, or the first one too many
                        str(min(len(fields), FIELDS) + 1),
                        f"expected {FIELDS} comma-separated fields (784 pixels, then the "
                        f"label), got {len(fields)}",
                    )
                try:
                    values = np.array(fields, dtype=np.int64)
                except ValueError:
                    values = None
                if values is None or not _in_range(values):
                    bad = _first_bad(fields)
                    expected = "a digit label 0-9" if bad == FIELDS - 1 else "an integer 0-255"
                    raise _fail(
                        path, number, _column(bad), f"expected {expected}, got {fields[bad]!r}"
                    )
                rows.append(values.astype(np.uint8))
                if number > ROWS:
                    raise _fail(path, number, "1", f"expected {ROWS} rows, the file has more")
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        # a truncated or corrupt gzip stream: the problem is just after the last whole line
        raise _fail(path, number + 1, "1", f"unreadable gzip/ASCII data ({error})") from error
    if number != ROWS:
        raise _fail(path, number + 1, "1", f"expected {ROWS} rows, the file ends after {number}")
    table = np.stack(rows)
    return table[:, :-1].reshape(-1, SIDE, SIDE), table[:, -1].astype(np.int64)


def _in_range(values: np.ndarray) -> bool:
    return bool((values[:-1] >= 0).all() and (values[:-1] <= 255).all()) and (0 <= values[-1] <= 9)


def _first_bad(fields: Sequence[str]) -> int:
    """The index of the first field that is not a valid pixel (or, last, label)."""
    for index, field in enumerate(fields):
        high = 9 if index == FIELDS - 1 else 255
        text = field.strip()
        if not text.isdigit() or int(text) > high:
            return index
    return FIELDS - 1


def read_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The base digits of ``folder / mnist_5k.csv.gz``: images ``(5000, 28, 28)`` uint8 and
    labels ``(5000,)``; raises :class:`DataFormatError` (file, line, column) or
    ``FileNotFoundError``. Cached per file version."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the MNIST 5k subset, see SOURCE.md)")
    stat = path.stat()
    return _read_cached(path, stat.st_mtime_ns, stat.st_size)


def check(folder: Path) -> None:
    """Read and validate the data file (5,000 rows of 784 pixels 0-255 and a label 0-9)."""
    read_digits(folder)


def base_pools(n_images: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint pools of base-digit indices for the train, stop and test pairs (60/20/20 %).

    Examples
    --------
    >>> pools = base_pools(10, seed=0)
    >>> [len(pools[s]) for s in ("train", "stop", "test")]
    [6, 2, 2]
    >>> sorted(np.concatenate(list(pools.values())).tolist()) == list(range(10))
    True
    """
    return _draw(n_images, seed)[0]


def draw_pairs(n_images: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (left, right) base-digit indices of every pair of each split, both drawn from that
    split's pool (:func:`base_pools`) and never the same image twice in a pair.

    Examples
    --------
    >>> pairs, pools = draw_pairs(10, seed=0), base_pools(10, seed=0)
    >>> left, right = pairs["test"]
    >>> bool(np.isin(left, pools["test"]).all() and (left != right).all())
    True
    """
    return _draw(n_images, seed)[1]


def _draw(
    n_images: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_images)
    first = round(n_images * FRACTIONS[0])
    second = first + round(n_images * FRACTIONS[1])
    pools = dict(zip(SPLITS, (order[:first], order[first:second], order[second:]), strict=True))
    pairs = {}
    for name, pool in pools.items():
        n = len(pool) * PAIRS_PER_DIGIT
        at = rng.integers(0, len(pool), n)
        # a non-zero offset within the pool: the right digit is always another image
        other = (at + rng.integers(1, len(pool), n)) % len(pool)
        pairs[name] = (pool[at], pool[other])
    return pools, pairs


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Overlay digit images ``(n, 28, 28)`` (0-255): ``left`` in the top-left and ``right`` in
    the bottom-right corner of a 36 x 36 canvas, pixel-wise maximum, 2 x 2 average pooling;
    float32 ``(n, 1, 18, 18)`` in [0, 1].

    Examples
    --------
    >>> a = np.zeros((1, 28, 28), np.uint8); a[0, 0, 0] = 255
    >>> b = np.zeros((1, 28, 28), np.uint8); b[0, -1, -1] = 255
    >>> x = compose(a, b)
    >>> x.shape, float(x[0, 0, 0, 0]), float(x[0, 0, -1, -1])
    ((1, 1, 18, 18), 0.25, 0.25)
    """
    n = len(left)
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :SIDE, :SIDE] = left
    lower = canvas[:, SHIFT:, SHIFT:]
    np.maximum(lower, right, out=lower)
    side = CANVAS // POOL
    pooled = canvas.reshape(n, side, POOL, side, POOL).astype(np.float32).mean(axis=(2, 4))
    return (pooled / 255.0)[:, None].astype(np.float32)


def load(folder: Path, seed: int) -> Splits:
    """The train, stop and test pairs of replication ``seed``: one :class:`MultiTargetData`
    per split with inputs ``(n, 1, 18, 18)`` and targets ``left`` and ``right``."""
    images, labels = read_digits(folder)
    parts = {}
    for name, (left, right) in draw_pairs(len(images), seed).items():
        parts[name] = MultiTargetData(
            compose(images[left], images[right]),
            {"left": labels[left], "right": labels[right]},
        )
    return Splits(parts["train"], parts["stop"], parts["test"])


def model(input_shape: tuple[int, ...], tasks: Sequence[Task], seed: int) -> nn.Module:
    """A small convolutional trunk shared by the tasks (conv 3x3 1->8, ReLU, max-pool, conv 3x3
    8->16, ReLU, max-pool, linear to 64, ReLU) and one linear head per task; Glorot-uniform
    weights and zero biases from ``seed`` (the global RNG is left alone).

    Examples
    --------
    >>> net = model((1, 18, 18), TASKS, seed=0)
    >>> {k: tuple(v.shape) for k, v in net(torch.zeros(2, 1, 18, 18)).items()}
    {'left': (2, 10), 'right': (2, 10)}
    """
    channels, height, width = input_shape
    flat = 16 * (height // 4) * (width // 4)  # two 2x2 max-pools (floor)
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        trunk = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, 64),
            nn.ReLU(),
        )
        heads = {task.name: nn.Linear(64, task.size) for task in tasks}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [*trunk, *heads.values()]:
            if isinstance(layer, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                layer.bias.zero_()
    return MultiTaskModel(trunk, heads)


SPEC = DatasetSpec(
    name="multimnist",
    folder="mnist_5k",
    description="MultiMNIST: classes of the upper-left and lower-right of two overlaid digits "
    "(two 10-class tasks), pairs of 5,000 MNIST digits (LeCun et al.)",
    tasks=TASKS,
    check=check,
    load=load,
    model=model,
    metric="accuracy",
    lr=1e-3,
    batch_size=128,
    # ~0.55 s of one core per epoch of 6,000 pairs: 12 epochs fit the ~8 s budget
    max_epochs=12,
    patience=3,
    vector_inputs=False,
)
