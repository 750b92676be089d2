"""The MultiMNIST and four-domain sentiment benchmark data sets (shared data, when present)."""

import gzip

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import polytask as pt
from conftest import shared_data
from polytask.datasets import DataFormatError, dataset
from polytask.datasets import _multimnist as mm
from polytask.evaluation import evaluate


@pytest.fixture
def one_thread():
    # the quick fits are timed for one core; several threads only contend on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- MultiMNIST ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_folder():
    return shared_data("mnist_5k")


@pytest.fixture(scope="module")
def mnist_splits(mnist_folder):
    return mm.SPEC.load(mnist_folder, 0)


@pytest.fixture(scope="module")
def mnist_lines(mnist_folder):
    with gzip.open(mnist_folder / mm.FILE, "rt") as handle:
        return handle.read().splitlines()


def test_multimnist_registered_with_image_inputs():
    spec = dataset("multimnist")
    assert spec is mm.SPEC and not spec.vector_inputs and spec.metric == "accuracy"
    assert [t.name for t in spec.tasks] == ["left", "right"]
    assert all(t.kind == "multiclass" and t.size == 10 for t in spec.tasks)


def test_multimnist_shapes_and_labels(mnist_folder, mnist_splits):
    mm.SPEC.check(mnist_folder)
    sizes = {"train": 6000, "stop": 2000, "test": 2000}  # two pairs per base digit of a pool
    for name, size in sizes.items():
        part = getattr(mnist_splits, name)
        assert tuple(part.x.shape) == (size, 1, 18, 18) and part.x.dtype == torch.float32
        assert float(part.x.min()) >= 0.0 and float(part.x.max()) <= 1.0
        for task in ("left", "right"):
            labels = part.targets[task]
            assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


def test_multimnist_pools_disjoint_and_pairs_within_them():
    pools = mm.base_pools(5000, seed=0)
    assert [len(pools[s]) for s in mm.SPLITS] == [3000, 1000, 1000]
    assert np.array_equal(np.sort(np.concatenate(list(pools.values()))), np.arange(5000))
    pairs = mm.draw_pairs(5000, seed=0)
    used = {}
    for name, (left, right) in pairs.items():
        assert len(left) == 2 * len(pools[name]) and (left != right).all()
        used[name] = set(left.tolist()) | set(right.tolist())
        assert used[name] <= set(pools[name].tolist())
    assert not used["train"] & used["test"] and not used["train"] & used["stop"]
    assert not used["stop"] & used["test"]


def test_multimnist_same_seed_same_splits(mnist_folder, mnist_splits):
    again = mm.SPEC.load(mnist_folder, 0)
    other = mm.SPEC.load(mnist_folder, 1)
    assert torch.equal(again.train.x, mnist_splits.train.x)
    assert torch.equal(again.test.targets["left"], mnist_splits.test.targets["left"])
    assert not torch.equal(other.train.x, mnist_splits.train.x)
    assert not np.array_equal(mm.base_pools(5000, 1)["test"], mm.base_pools(5000, 0)["test"])


def test_multimnist_images_contain_both_digits(mnist_folder, mnist_splits):
    # an independent reading of the file and an independent composition
    table = pd.read_csv(mnist_folder / mm.FILE, header=None).to_numpy()
    digits, labels = table[:, :784].reshape(-1, 28, 28).astype(np.float32), table[:, 784]
    for name in ("train", "test"):
        left, right = mm.draw_pairs(5000, seed=0)[name]
        part = getattr(mnist_splits, name)
        rows = np.arange(8)
        upper = np.pad(digits[left[rows]], ((0, 0), (0, 8), (0, 8)))  # digit at the top left
        lower = np.pad(digits[right[rows]], ((0, 0), (8, 0), (8, 0)))  # and at the bottom right
        canvas = torch.from_numpy(np.maximum(upper, lower))[:, None] / 255
        expected = F.avg_pool2d(canvas, 2)
        torch.testing.assert_close(part.x[rows], expected)
        assert part.targets["left"][rows].tolist() == labels[left[rows]].tolist()
        assert part.targets["right"][rows].tolist() == labels[right[rows]].tolist()
        # neither digit alone gives the image: both are in it
        alone = F.avg_pool2d(torch.from_numpy(upper)[:, None] / 255, 2)
        assert not torch.allclose(part.x[rows], alone)


def _write_gz(path, lines):
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


def test_multimnist_check_names_file_line_and_column(tmp_path, mnist_lines):
    missing = tmp_path / "missing"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match=r"mnist_5k\.csv\.gz"):
        mm.check(missing)

    lines = mnist_lines[:10]
    bad = lines[2].rsplit(",", 1)[0] + ",12"  # label 12 at line 3
    _write_gz(tmp_path / mm.FILE, [*lines[:2], bad, *lines[3:]])
    with pytest.raises(DataFormatError, match=r"mnist_5k\.csv\.gz, line 3, column 785 \(label\)"):
        mm.check(tmp_path)

    short = lines[4].rsplit(",", 1)[0]  # 784 fields at line 5
    _write_gz(tmp_path / mm.FILE, [*lines[:4], short, *lines[5:]])
    with pytest.raises(DataFormatError, match=r"mnist_5k\.csv\.gz, line 5, .*got 784"):
        mm.check(tmp_path)

    pixel = lines[1].replace(",", ",300,", 1).split(",")  # pixel 300 at column 2 ...
    del pixel[2]  # ... keeping 785 fields
    _write_gz(tmp_path / mm.FILE, [lines[0], ",".join(pixel), *lines[2:]])
    with pytest.raises(DataFormatError, match=r"line 2, column 2 \(pixel 1\).*'300'"):
        mm.check(tmp_path)

    _write_gz(tmp_path / mm.FILE, lines)  # too few rows: the problem is the missing line 11
    with pytest.raises(DataFormatError, match=r"mnist_5k\.csv\.gz, line 11, .*5000 rows"):
        mm.check(tmp_path)

    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / mm.FILE).write_bytes(whole[: len(whole) // 2])  # a cut gzip stream
    with pytest.raises(DataFormatError, match=r"mnist_5k\.csv\.gz, line \d+"):
        mm.check(tmp_path)


def test_multimnist_model_seeded_without_global_rng():
    state = torch.random.get_rng_state()
    a = mm.model((1, 18, 18), mm.TASKS, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    b, c = mm.model((1, 18, 18), mm.TASKS, seed=3), mm.model((1, 18, 18), mm.TASKS, seed=4)
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert not torch.equal(pa[0], pc[0])
    assert len(a.shared_parameters()) == 6  # two convolutions and a linear layer


def test_multimnist_quick_fit_beats_chance(mnist_splits, one_thread):
    tasks = list(mm.SPEC.tasks)
    model = mm.SPEC.model(tuple(mnist_splits.train.x.shape[1:]), tasks, 0)
    trainer = pt.Trainer(max_epochs=2, quiet=True, device="cpu", batch_size=128)
    history = trainer.fit(model, tasks, mnist_splits.train, mnist_splits.stop)
    assert history["stop_loss"][-1] < history["stop_loss"][0]
    scores = evaluate(model, tasks, mnist_splits.test)
    assert all(scores[t.name]["accuracy"] > 0.3 for t in tasks)  # chance is 0.1
