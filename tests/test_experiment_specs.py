"""Today's named experiments read their data, tasks and default model from the data set
protocol (:class:`polytask.datasets.DatasetSpec`), so each data set runs in a suite too."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_data
from polytask.datasets import DATASET_NAMES, SUITE_DATASETS, DataFormatError, dataset
from polytask.datasets._reviews import reviews_splits
from polytask.experiments import (
    AdultEducationExperiment,
    ReviewsExperiment,
    SentimentDomainsExperiment,
    SyntheticExperiment,
)
from polytask.experiments._suite import DatasetExperiment


def _same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_every_named_experiment_has_a_registered_data_set():
    for name in ("hetero", "phase", "reviews", "adult-education", "sentiment-domains", "census"):
        assert name in DATASET_NAMES and dataset(name).name == name
    # the suite's default stays the benchmark sets; the experiments' sets run when named
    assert {"hetero", "phase", "reviews", "adult-education"}.isdisjoint(SUITE_DATASETS)
    assert len(SUITE_DATASETS) == 8


@pytest.mark.parametrize("generator", ["hetero", "phase"])
def test_the_synthetic_experiment_is_its_data_set(generator):
    """Data, tasks and initial weights of the experiment are the registered data set's."""
    experiment = SyntheticExperiment(generator)
    spec = dataset(generator)
    assert [t.name for t in experiment.tasks()] == [t.name for t in spec.tasks]
    splits = spec.load(Path(), 3)
    for a, b in zip(experiment.data(3), (splits.train, splits.stop, splits.test), strict=True):
        assert torch.equal(a.x, b.x)
        assert all(torch.equal(a.targets[t], b.targets[t]) for t in a.targets)
        assert all(torch.equal(a.clean_targets[t], b.clean_targets[t]) for t in a.targets)
    assert _same_parameters(experiment.build_model(5), spec.model((1,), list(spec.tasks), 5))
    # a smaller experiment describes its own size, not the registered one
    small = SyntheticExperiment(generator, n=200, n_tasks=2)
    assert [len(p) for p in small.data(0)] == [10, 90, 100]
    with pytest.raises(ValueError, match="generator must be one of"):
        SyntheticExperiment("cosine")


def test_a_synthetic_data_set_in_the_suite_is_tested_against_the_noiseless_curve():
    """In the suite, hetero is scored as its experiment is: against the clean targets (the
    training-mean reference by hand), with the experiment's Adam epsilon."""
    experiment = DatasetExperiment("hetero", methods=("mean",), references=(), budget=1)
    assert experiment.test_against == "clean" and experiment.config()["training"]["eps"] == 1e-3
    outcome = experiment.run(seed=4, methods=["train-mean"])
    train, _, test = experiment.data(4)
    for task in ("task0", "task4"):
        mean = train.targets[task].mean()
        by_hand = float(((test.clean_targets[task] - mean) ** 2).mean())
        noisy = float(((test.targets[task] - mean) ** 2).mean())
        assert outcome.metrics["train-mean"][task]["mse"] == pytest.approx(by_hand, rel=1e-5)
        assert abs(by_hand - noisy) > 1e-3  # the two differ: the test could tell them apart


def test_reviews_reads_the_reviews_data_set():
    folder = shared_data("sentiment_labelled_sentences")
    experiment = ReviewsExperiment(folder, seed=2)
    train, stop, test = experiment.load()
    splits = dataset("reviews").load(folder, 2)
    spec_train, spec_stop = splits.train, splits.stop
    assert list(train) == ["movie", "restaurant", "product", "site"]
    # 300 product sentences and 3 x 200 held out for the site task, each split 60/20/20
    assert len(train["product"]) == 180 and len(stop["product"]) == 60
    assert len(train["site"]) == 360 and len(test["site"]) == 120
    assert set(np.unique(train["site"].y.numpy())) == {0, 1, 2}
    n_words = train["movie"].n_features
    assert all(part[t].n_features == n_words for part in (stop, test) for t in part)
    assert (train["movie"].x != spec_train["movie"].x).nnz == 0
    model = experiment.build_model(experiment.tasks(), n_words)
    assert _same_parameters(model, dataset("reviews").model((n_words,), experiment.tasks(), 2))
    batch = torch.as_tensor(spec_stop["site"].x[:4].toarray(), dtype=torch.float32)
    assert set(model(batch)) == {"movie", "restaurant", "product", "site"}


def test_a_malformed_reviews_file_is_named_before_any_fit(tmp_path):
    folder = shared_data("sentiment_labelled_sentences")
    for name in ("imdb_labelled.txt", "yelp_labelled.txt", "amazon_cells_labelled.txt"):
        shutil.copy(folder / name, tmp_path / name)
    lines = (tmp_path / "yelp_labelled.txt").read_text().splitlines()
    lines[6] = lines[6].rsplit("\t", 1)[0] + "\tpositive"
    (tmp_path / "yelp_labelled.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"yelp_labelled\.txt, line 7, column label"):
        dataset("reviews").check(tmp_path)
    with pytest.raises(DataFormatError, match=r"yelp_labelled\.txt, line 7"):
        reviews_splits(tmp_path, 0)


@pytest.mark.parametrize(
    "experiment_type, name",
    [(AdultEducationExperiment, "adult-education"), (SentimentDomainsExperiment, None)],
)
def test_structured_experiments_build_their_data_sets_model(experiment_type, name):
    """The structured experiments' network is their data set's default model, so a method
    compared there and in the suite is the same network."""
    experiment = experiment_type("")
    spec = dataset(name or experiment.name)
    assert [t.name for t in experiment.tasks()] == [t.name for t in spec.tasks]
    ours = experiment.build_model(30, 7, experiment.tasks())
    assert _same_parameters(ours, spec.model((30,), list(spec.tasks), 7))
    single = experiment.build_model(30, 7, experiment.tasks()[:1])
    assert list(single.task_names) == [spec.tasks[0].name]


def test_adult_education_splits_come_from_the_data_set():
    folder = shared_data("adult")
    experiment = AdultEducationExperiment(folder, n_train=200, n_stop=100, n_test=50)
    train, stop, test = experiment.data(1)
    assert (len(train), len(stop), len(test)) == (200, 100, 50)
    full = dataset("adult-education").load(folder, 1)
    # the same draw: the experiment's first rows are the data set's first rows
    assert torch.equal(full.train.targets["education"][:200], train.targets["education"])


def test_the_configuration_holds_the_data_files_digests(tmp_path):
    """Results from other data files are stored apart: the configuration hash of a suite's
    data set follows the bytes of its files (not their location; documentation left out)."""
    from polytask.experiments import config_hash

    shared = shared_data("energy_efficiency").parent
    copy = tmp_path / "data"
    shutil.copytree(shared / "energy_efficiency", copy / "energy_efficiency")
    original = DatasetExperiment("energy", shared, methods=("mean",), references=())
    moved = DatasetExperiment("energy", copy, methods=("mean",), references=())
    assert set(moved.config()["data"]) == {
        "energy_efficiency/ENB2012_data.csv",
        "energy_efficiency/ENB2012_data.xlsx",
    }
    assert config_hash(moved, 0) == config_hash(original, 0)  # same bytes, another folder
    (copy / "energy_efficiency" / "SOURCE.md").write_text("edited notes\n")
    assert config_hash(moved, 0) == config_hash(original, 0)
    table = copy / "energy_efficiency" / "ENB2012_data.csv"
    lines = table.read_text().splitlines()
    lines[5] = lines[5].replace("0.", "1.", 1)  # one value of one row
    table.write_text("\n".join(lines) + "\n")
    assert config_hash(moved, 0) != config_hash(original, 0)
    assert dataset("hetero").fingerprint(shared) == {}  # generated: no file
