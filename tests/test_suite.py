"""The benchmark suite: one protocol per data set, its references, the leaderboard's statistics
recomputed by hand, and a killed suite that resumes without repeating finished work."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from conftest import shared_data, stored_replications
from polytask.cli import main
from polytask.datasets import dataset
from polytask.evaluation import IncompleteReplicationsWarning, holm
from polytask.evaluation._leaderboard import dataset_board, delta_table, mean_ranks, relative_rmse
from polytask.experiments._references import TRAIN_MEAN, _reference_output
from polytask.experiments._replicate import config_hash
from polytask.experiments._store import Store
from polytask.experiments._suite import DatasetExperiment, suite_experiments
from polytask.experiments._suite_report import leaderboard, write_leaderboard
from polytask.tasks import Task


# -- the leaderboard's figures, recomputed by hand ------------------------------------------
def _frame(values: dict[str, np.ndarray], tasks=("a", "b"), metric="mse") -> pd.DataFrame:
    """values: method -> array (replications, tasks)."""
    rows = []
    for method, table in values.items():
        for r, row in enumerate(table):
            for t, v in zip(tasks, row, strict=True):
                rows.append({"replication": r, "task": t, "method": method, metric: float(v)})
    return pd.DataFrame(rows)


def _by_hand_delta(method: np.ndarray, base: np.ndarray, greater: bool) -> np.ndarray:
    sign = -1.0 if greater else 1.0
    return 100 * (sign * (method - base) / base).mean(axis=1)


@pytest.fixture
def two_datasets():
    rng = np.random.default_rng(3)
    n = 12
    base = rng.uniform(1, 2, size=(n, 2))
    first = {
        "mean": base,
        "good": base * rng.uniform(0.6, 0.8, size=(n, 2)),  # lower MSE: better
        "same": base * rng.uniform(0.95, 1.05, size=(n, 2)),
        "bad": base * rng.uniform(1.2, 1.5, size=(n, 2)),
    }
    acc = rng.uniform(0.6, 0.7, size=(n, 2))
    second = {
        "mean": acc,
        "good": acc * 1.05,  # higher accuracy: better
        "same": acc * rng.uniform(0.99, 1.01, size=(n, 2)),
        "bad": acc * rng.uniform(0.8, 0.9, size=(n, 2)),
    }
    return first, second


def test_dataset_board_matches_delta_m_wilcoxon_and_holm_by_hand(two_datasets):
    first, second = two_datasets
    for values, metric, greater in ((first, "mse", False), (second, "accuracy", True)):
        board = dataset_board(_frame(values, metric=metric), "mean", metric, n_resamples=199)
        assert board["method"].tolist() == ["mean", "good", "same", "bad"]
        deltas = {m: _by_hand_delta(v, values["mean"], greater) for m, v in values.items()}
        raw = {m: stats.wilcoxon(d).pvalue for m, d in deltas.items() if m != "mean"}
        # Holm by hand: sort, multiply by (m - rank), running maximum, cap at 1
        order = sorted(raw, key=raw.get)
        adjusted, running = {}, 0.0
        for k, m in enumerate(order):
            running = max(running, min(1.0, (len(order) - k) * raw[m]))
            adjusted[m] = running
        for row in board.itertuples():
            assert row.delta_m == pytest.approx(deltas[row.method].mean())
            if row.method == "mean":
                assert np.isnan(row.wilcoxon_p)
                continue
            assert row.wilcoxon_p == pytest.approx(raw[row.method])
            assert row.holm_p == pytest.approx(adjusted[row.method])
            assert row.ci_low <= row.delta_m <= row.ci_high
        verdicts = dict(zip(board["method"], board["verdict"], strict=True))
        assert verdicts == {"mean": "", "good": "better", "same": "", "bad": "worse"}


def test_references_do_not_change_the_methods_holm_adjustment(two_datasets):
    first, _ = two_datasets
    alone = dataset_board(_frame(first), "mean", "mse", n_resamples=99).set_index("method")
    rng = np.random.default_rng(9)
    with_references = {
        **first,
        "linear": first["mean"] * rng.uniform(1.5, 2.0, size=first["mean"].shape),
        "single-task": first["mean"] * rng.uniform(0.5, 0.7, size=first["mean"].shape),
    }
    board = dataset_board(
        _frame(with_references),
        "mean",
        "mse",
        references=("linear", "single-task"),
        n_resamples=99,
    ).set_index("method")
    for method in ("good", "same", "bad"):
        assert board.loc[method, "holm_p"] == pytest.approx(alone.loc[method, "holm_p"])
    raw = board.loc[["linear", "single-task"], "wilcoxon_p"].to_numpy()
    assert board.loc[["linear", "single-task"], "holm_p"].tolist() == pytest.approx(
        holm(raw).tolist()
    )


def test_mean_ranks_by_hand_and_counts_of_significant_wins(two_datasets):
    first, second = two_datasets
    frames = {
        "first": (_frame(first), "mse"),
        "second": (_frame(second, metric="accuracy"), "accuracy"),
    }
    deltas = {n: delta_table(f, "mean", m) for n, (f, m) in frames.items()}
    boards = {n: dataset_board(f, "mean", m, n_resamples=199) for n, (f, m) in frames.items()}
    ranks = mean_ranks(deltas, boards, n_resamples=500).set_index("method")
    by_hand = {}
    for name, (_, _) in frames.items():
        means = deltas[name].mean()
        for method, rank in zip(means.index, stats.rankdata(means.to_numpy()), strict=True):
            by_hand.setdefault(method, []).append(rank)
    for method, values in by_hand.items():
        assert ranks.loc[method, "mean_rank"] == pytest.approx(np.mean(values))
        assert ranks.loc[method, "ci_low"] <= ranks.loc[method, "mean_rank"]
        assert ranks.loc[method, "mean_rank"] <= ranks.loc[method, "ci_high"]
    assert ranks.loc["good", "mean_rank"] == 1.0  # best on both data sets
    assert ranks.loc["good", "better"] == 2 and ranks.loc["good", "worse"] == 0
    assert ranks.loc["bad", "worse"] == 2 and ranks.loc["mean", "better"] == 0


def test_delta_table_leaves_out_incomplete_replications_and_excluded_labels():
    values = {"mean": np.ones((3, 2)), "new": np.full((3, 2), 0.5), TRAIN_MEAN: np.ones((3, 2))}
    frame = _frame(values)
    frame = frame[
        ~((frame["method"] == "new") & (frame["replication"] == 1) & (frame["task"] == "b"))
    ]
    with pytest.warns(
        IncompleteReplicationsWarning,
        match=r"^toy: 1 of 3 replications .* every label \(replication 1: \['new'\]\)",
    ):
        table = delta_table(frame, "mean", "mse", exclude=(TRAIN_MEAN,), where="toy")
    assert list(table.columns) == ["mean", "new"]
    assert list(table.index) == [0, 2]  # replication 1 lacks a task for "new": never averaged
    assert table["new"].tolist() == [-50.0, -50.0]
    no_base = frame[
        ~((frame["method"] == "mean") & (frame["replication"] == 2) & (frame["task"] == "a"))
    ]  # the baseline lacks a task: it is named, not the labels measured against it
    with pytest.warns(IncompleteReplicationsWarning, match=r"replication 2: \['mean'\]\)"):
        assert list(delta_table(no_base, "mean", "mse", exclude=(TRAIN_MEAN,)).index) == [0]


def test_the_report_says_which_replications_a_row_lacks_and_when_n_is_too_small():
    from polytask.experiments._suite_report import _coverage_note

    values = {"mean": np.ones((8, 2)), "new": np.full((8, 2), 0.5)}
    frame = _frame(values)
    board = dataset_board(frame, "mean", "mse", n_resamples=99)
    assert _coverage_note(board) == ""
    lacking = frame[
        ~((frame["method"] == "new") & (frame["replication"] == 1) & (frame["task"] == "b"))
    ]
    board = dataset_board(lacking, "mean", "mse", n_resamples=99)
    assert board["n"].tolist() == [8, 7]
    assert "left out for lacking a task's metric: 1 of new (of 8)" in _coverage_note(board)
    few = dataset_board(frame[frame["replication"] < 4], "mean", "mse", n_resamples=99)
    assert "cannot reach p < 0.05" in _coverage_note(few)


def test_relative_rmse_is_the_root_of_the_mse_ratio_to_the_training_mean():
    values = {
        TRAIN_MEAN: np.array([[4.0, 9.0], [1.0, 4.0]]),
        "net": np.array([[1.0, 1.0], [1.0, 1.0]]),
    }
    table = relative_rmse(_frame(values), TRAIN_MEAN, n_resamples=99).set_index("task")
    assert table.loc["a", "rrmse"] == pytest.approx(np.mean([0.5, 1.0]))
    assert table.loc["b", "rrmse"] == pytest.approx(np.mean([1 / 3, 0.5]))
    with pytest.raises(ValueError, match="no 'missing' rows"):
        relative_rmse(_frame(values), "missing")


def test_leaderboard_files_are_self_contained_and_agree_with_the_tables(tmp_path, two_datasets):
    first, _ = two_datasets
    frame = _frame({**first, TRAIN_MEAN: first["mean"] * 3}, tasks=("heating", "cooling"))
    experiment = DatasetExperiment(
        "energy", methods=("mean", "good", "same", "bad")[:1], references=()
    )
    board = leaderboard({"energy": frame}, {"energy": experiment}, n_resamples=199)
    files = write_leaderboard(board, {"energy": experiment}, tmp_path, command="polytask suite")
    html = files["html"].read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    markdown = files["markdown"].read_text()
    good = board.boards["energy"].set_index("method").loc["good"]
    assert f"**{good.delta_m:+.2f} [{good.ci_low:+.2f}, {good.ci_high:+.2f}]**" in markdown
    assert f"<b>{good.delta_m:+.2f} [{good.ci_low:+.2f}, {good.ci_high:+.2f}]</b>" in html
    assert "**" not in html
    assert "Relative RMSE" in markdown and "energy/heating" in markdown
    assert (tmp_path / "ranks.csv").exists() and (tmp_path / "datasets.csv").exists()


def test_dataset_experiment_reads_a_changed_data_file_again(tmp_path):
    """The splits are cached per data set and seed; a file changed on disk is read again (the
    cache once returned the old rows for the new file, under the new file's digests)."""
    folder = tmp_path / "concrete_slump"
    shutil.copytree(shared_data("concrete_slump"), folder)
    experiment = DatasetExperiment("concrete", data_dir=tmp_path)
    before = experiment.data(0)
    path = folder / "slump_test.data"
    lines = path.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = str(float(first[1]) + 1000)  # one mix's cement, an input column
    path.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    after = experiment.data(0)
    assert experiment.data(0)[0] is after[0]  # cached while the file stands
    # the changed row is in one of the splits (and the training split's statistics scale all)
    assert any(not torch.equal(b.x, a.x) for b, a in zip(before, after, strict=True))
    # a rewrite of the same size is read again too (the file's status-change time moved)
    text = path.read_text()
    path.write_text(text.replace(first[1], str(float(first[1]) + 1), 1))
    assert path.stat().st_size == len(text.encode())
    again = experiment.data(0)
    assert any(not torch.equal(b.x, a.x) for b, a in zip(after, again, strict=True))


# -- the protocol -----------------------------------------------------------------------------
def test_dataset_experiment_refuses_bad_configurations_before_any_fit():
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        DatasetExperiment("nope")
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        DatasetExperiment("energy", methods=("mean", "magic"))
    with pytest.raises(ValueError, match="unknown references"):
        DatasetExperiment("energy", references=("knn",))
    with pytest.raises(ValueError, match="named twice"):
        DatasetExperiment("energy", methods=("mean", "mean"))
    with pytest.raises(ValueError, match="baseline 'uw' is not among"):
        DatasetExperiment("energy", methods=("mean",), baseline="uw")
    with pytest.raises(ValueError, match="named twice"):
        suite_experiments(["energy", "energy"], "unused")


def test_a_reference_that_cannot_fit_a_task_is_refused_before_any_fit(monkeypatch):
    import dataclasses

    from polytask.experiments import _suite

    spec = dataclasses.replace(dataset("energy"), tasks=(Task("tags", kind="multilabel", size=3),))
    monkeypatch.setattr(_suite, "dataset", lambda name: spec)
    with pytest.raises(ValueError, match=r"no scikit-learn reference for tasks \['tags'\]"):
        DatasetExperiment("energy", methods=("mean",), references=("linear",))
    DatasetExperiment("energy", methods=("mean",), references=("single-task",))  # accepted


def test_a_missing_data_folder_is_refused_before_any_fit(tmp_path):
    with pytest.raises(FileNotFoundError):
        suite_experiments(["energy"], tmp_path)


def test_the_budget_caps_epochs_and_enters_the_configuration():
    full = DatasetExperiment("energy", methods=("mean",))
    quick = DatasetExperiment("energy", methods=("mean",), budget=2)
    assert quick.max_epochs == 2 and full.max_epochs == dataset("energy").max_epochs
    assert full.config_hash() != quick.config_hash()


def test_references_against_independent_computations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    task = Task("y")
    linear = _reference_output("linear", task, x[:150], y[:150], x[150:175], y[150:175], x[175:], 0)
    assert np.abs(linear.ravel() - y[175:]).max() < 0.05  # ridge recovers a linear map
    mean = _reference_output(TRAIN_MEAN, task, x[:150], y[:150], None, y[:1], x[175:], 0)
    assert np.allclose(mean, y[:150].mean())
    labels = (x[:, 0] > 0).astype(float)
    binary = Task("b", kind="binary")
    logits = _reference_output(
        "linear", binary, x[:150], labels[:150], x[150:175], labels[150:175], x[175:], 0
    )
    assert logits.shape == (25,) and np.mean((logits > 0) == (labels[175:] == 1)) > 0.9


@pytest.mark.parametrize("name", ["concrete"])
def test_one_replication_scores_every_label_on_every_task(name):
    data = shared_data(dataset(name).folder).parent
    experiment = DatasetExperiment(name, data, methods=("mean", "upgrad"), budget=2, device="cpu")
    outcome = experiment.run(seed=1)
    tasks = [t.name for t in experiment.tasks()]
    assert list(outcome.metrics) == experiment.labels()
    for label, per_task in outcome.metrics.items():
        assert sorted(per_task) == sorted(tasks), label
        assert all(np.isfinite(v["mse"]) for v in per_task.values())
    # predicting the training mean of standardised targets: the test MSE is the test rows'
    # mean squared standardised target, computed here from the loaded data
    _, _, test = experiment.data(1)
    for task in tasks:
        expected = float((test.targets[task].double() ** 2).mean())
        assert outcome.metrics[TRAIN_MEAN][task]["mse"] == pytest.approx(expected, rel=1e-5)


def test_the_tuned_weights_do_not_depend_on_the_test_rows(monkeypatch):
    """Scrambling the test targets changes the tuned method's test scores, never its weights."""
    from polytask.data import MultiTargetData
    from polytask.experiments._tune import tune

    data = shared_data("energy_efficiency").parent
    experiment = DatasetExperiment(
        "energy", data, methods=("mean", "tuned"), references=(), budget=2, device="cpu"
    )
    honest = tune(experiment, "grid", 3, seed=0, resolution=2, prune=False)
    train, stop, test = experiment.data(0)
    scrambled = MultiTargetData(test.x, {t: -3 * v for t, v in test.targets.items()})
    monkeypatch.setattr(DatasetExperiment, "data", lambda self, seed: (train, stop, scrambled))
    blind = tune(experiment, "grid", 3, seed=0, resolution=2, prune=False)
    assert blind.weights == honest.weights
    assert blind.test_metrics != honest.test_metrics


# -- the command, killed and resumed ------------------------------------------------------------
def test_a_killed_suite_resumes_without_repeating_finished_replications(tmp_path, monkeypatch):
    data = shared_data("energy_efficiency").parent
    out = tmp_path / "suite"
    args = [
        "suite",
        "--datasets",
        "concrete",
        "--methods",
        "mean,uw",
        "--references",
        "linear",
        "--budget",
        "2",
        "--replications",
        "6",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "polytask", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    store = out / "results.sqlite"
    deadline = time.monotonic() + 180
    while stored_replications(store) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = stored_replications(store)
    assert 2 <= interrupted_at < 6, "the kill should land mid-run"
    calls = []
    real_run = DatasetExperiment.run

    def counting_run(self, seed=0, **options):
        calls.append(seed)
        return real_run(self, seed, **options)

    monkeypatch.setattr(DatasetExperiment, "run", counting_run)
    assert main(args) == 0  # in this process (one job), so the calls are counted
    assert len(calls) == 6 - interrupted_at
    experiment = DatasetExperiment(
        "concrete", data, methods=("mean", "uw"), references=("linear",), budget=2
    )
    assert sorted(Store(store).finished(config_hash(experiment, 0))) == list(range(6))
    assert (out / "leaderboard.md").exists() and (out / "leaderboard.html").exists()
    # the leaderboard redrawn from the store alone equals the one the run wrote
    assert main(["report", str(store), "--suite", "--out", str(tmp_path / "again")]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "again" / "datasets.csv"), pd.read_csv(out / "datasets.csv")
    )


def test_sentiment_domains_as_a_data_set_keeps_its_experiment_data():
    """The sentiment-domains experiment reads the data set of the suite: same split, same
    vocabulary, joint = 2 * site + sentiment, a word seen only in held-out rows not a column."""
    from polytask.experiments import SentimentDomainsExperiment

    folder = shared_data("sentiment_labelled_sentences")
    splits = dataset("sentiment-domains").load(folder, 5)
    train, stop, test = SentimentDomainsExperiment(str(folder)).data(5)
    assert np.array_equal(train.x.numpy(), splits.train.x.numpy())
    assert np.array_equal(test.targets["joint"].numpy(), splits.test.targets["joint"].numpy())
    site, sentiment, joint = (
        splits.train.targets[t].numpy() for t in ("site", "sentiment", "joint")
    )
    assert np.array_equal(joint, 2 * site + sentiment)
    assert len(train) + len(stop) + len(test) == 3000
    assert (train.x.numpy().sum(axis=0) >= 2).all()  # min_df=2 on the training sentences
