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
from polytask.datasets import _sentiment as st
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
    with pytest.raises(DataFormatError, match=r"mnist_5k\.csv\.gz, line 5, column 785: .*got 784"):
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


# -- four-domain sentiment ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_folder():
    shared_data("rt_polarity")
    return shared_data("sentiment_labelled_sentences")


@pytest.fixture(scope="module")
def text_splits(text_folder):
    return st.SPEC.load(text_folder, 0)


def test_sentiment_registered_with_four_binary_tasks(text_folder):
    spec = dataset("sentiment")
    assert spec is st.SPEC and spec.vector_inputs and spec.metric == "accuracy"
    assert [t.name for t in spec.tasks] == ["movie", "restaurant", "product", "rt"]
    assert all(t.kind == "binary" for t in spec.tasks)
    spec.check(text_folder)


def test_sentiment_sparse_parts_of_each_domain(text_splits):
    sizes = {"movie": 1000, "restaurant": 1000, "product": 1000, "rt": 2000}
    widths = set()
    for name, fraction in zip(("train", "stop", "test"), (0.6, 0.2, 0.2), strict=True):
        part = getattr(text_splits, name)
        assert list(part) == list(sizes)
        for task, data in part.items():
            assert data.sparse and len(data) == round(sizes[task] * fraction)
            assert set(np.unique(data.x.data)) == {1.0}  # a binary bag of words
            widths.add(data.n_features)
    assert len(widths) == 1


def test_sentiment_vocabulary_from_training_sentences_only(text_folder, text_splits):
    from sklearn.feature_extraction.text import CountVectorizer

    train, _, test = st.split_sentences(text_folder, 0)
    words = CountVectorizer().build_analyzer()
    train_words = {w for sentences, _ in train.values() for s in sentences for w in words(s)}
    test_words = {w for sentences, _ in test.values() for s in sentences for w in words(s)}
    assert test_words - train_words  # words seen only in test sentences exist ...
    assert text_splits.train["movie"].n_features == len(train_words)  # ... and are left out
    # a test sentence with a test-only word: only its training words are counted
    sentences, _ = test["movie"]
    row = next(i for i, s in enumerate(sentences) if set(words(s)) - train_words)
    known = set(words(sentences[row])) & train_words
    assert text_splits.test["movie"].x[row].sum() == len(known)


def test_sentiment_rt_subsample_balanced_and_seeded(text_folder):
    parts = st.split_sentences(text_folder, 0)
    labels = np.concatenate([part["rt"][1] for part in parts])
    assert np.bincount(labels).tolist() == [1000, 1000]
    rt = {s for part in parts for s in part["rt"][0]}
    again = {s for part in st.split_sentences(text_folder, 0) for s in part["rt"][0]}
    other = {s for part in st.split_sentences(text_folder, 1) for s in part["rt"][0]}
    assert rt == again and rt != other
    # drawn from the cp1252 files: a snippet with a curly quote or dash decodes as such
    everything = st.read_rt(text_folder.parent / "rt_polarity" / "rt-polarity.pos")
    assert len(everything) == 5331 and any("\u2014" in s or "\u2019" in s for s in everything)


def _text_copy(tmp_path, text_folder, lines=20):
    """A small copy of both folders: the first lines of every file."""
    uci, rt = tmp_path / "sentiment_labelled_sentences", tmp_path / "rt_polarity"
    uci.mkdir()
    rt.mkdir()
    for name in st.SITES.values():
        head = (text_folder / name).read_bytes().split(b"\n")[:lines]
        (uci / name).write_bytes(b"\n".join(head) + b"\n")
    for name in st.RT_FILES.values():
        head = (text_folder.parent / "rt_polarity" / name).read_bytes().split(b"\n")[:lines]
        (rt / name).write_bytes(b"\n".join(head) + b"\n")
    return uci, rt


def _replace_line(path, number, new):
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = new
    path.write_bytes(b"\n".join(lines))


def test_sentiment_check_names_file_line_and_column(tmp_path, text_folder):
    uci, rt = _text_copy(tmp_path, text_folder)
    st.check(uci)
    imdb = uci / "imdb_labelled.txt"
    _replace_line(imdb, 3, b"a fine film\t2")
    with pytest.raises(DataFormatError, match=r"imdb_labelled\.txt, line 3, column label"):
        st.check(uci)
    _replace_line(imdb, 3, b"a fine film 1")  # no TAB
    with pytest.raises(DataFormatError, match=r"imdb_labelled\.txt, line 3, column label"):
        st.check(uci)
    _replace_line(imdb, 3, b" \t1")
    with pytest.raises(DataFormatError, match=r"imdb_labelled\.txt, line 3, column sentence"):
        st.check(uci)
    _replace_line(imdb, 3, b"a fine film\t1")
    _replace_line(uci / "yelp_labelled.txt", 7, b"caf\xe9 au lait\t1")  # Latin-1, not UTF-8
    with pytest.raises(DataFormatError, match=r"yelp_labelled\.txt, line 7, column sentence"):
        st.check(uci)
    _replace_line(uci / "yelp_labelled.txt", 7, b"cafe au lait\t1")
    st.check(uci)
    _replace_line(rt / "rt-polarity.neg", 4, b"dull \x81 .")  # 0x81 is undefined in cp1252
    with pytest.raises(DataFormatError, match=r"rt-polarity\.neg, line 4, column sentence"):
        st.check(uci)
    _replace_line(rt / "rt-polarity.neg", 4, b"   ")
    with pytest.raises(DataFormatError, match=r"rt-polarity\.neg, line 4, column sentence"):
        st.check(uci)
    (rt / "rt-polarity.neg").unlink()
    with pytest.raises(FileNotFoundError, match=r"rt-polarity\.neg"):
        st.check(uci)


def test_sentiment_model_seeded_without_global_rng():
    state = torch.random.get_rng_state()
    a = st.model((30,), st.TASKS, seed=2)
    assert torch.equal(state, torch.random.get_rng_state())
    b, c = st.model((30,), st.TASKS, seed=2), st.model((30,), st.TASKS, seed=3)
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert not torch.equal(pa[0], pc[0])


def test_sentiment_quick_fit_learns(text_splits, one_thread):
    tasks = list(st.SPEC.tasks)
    width = text_splits.train["movie"].n_features
    model = st.SPEC.model((width,), tasks, 0)
    trainer = pt.Trainer(max_epochs=2, quiet=True, device="cpu")
    history = trainer.fit(model, tasks, text_splits.train, text_splits.stop)
    assert history["stop_loss"][-1] < history["stop_loss"][0]
