"""The structured-loss experiments on the shared data, task-weight search and its front."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from polytask.cli import main
from polytask.datasets import DataFormatError, dataset
from polytask.datasets._adult_education import EDUCATION_TO_LEVEL
from polytask.datasets._census import read_census
from polytask.experiments import (
    AdultEducationExperiment,
    SentimentDomainsExperiment,
    SyntheticExperiment,
    plot_front,
    simplex_grid,
    tune,
)
from polytask.experiments._tune import _pareto, beyond_front

optuna = pytest.importorskip("optuna", reason="the 'tune' extra is not installed")


def small_adult(data_dir, **changes):
    options = {"n_train": 300, "n_stop": 300, "n_test": 300, "max_epochs": 4, "patience": 2}
    return AdultEducationExperiment(str(data_dir), **{**options, **changes})


def test_simplex_grid_covers_the_simplex_once():
    for n_tasks, resolution in [(2, 6), (3, 6), (4, 2)]:
        grid = simplex_grid(n_tasks, resolution)
        assert len(grid) == len(set(grid))
        from math import comb

        assert len(grid) == comb(resolution + n_tasks - 1, n_tasks - 1)
        assert all(abs(sum(p) - n_tasks) < 1e-9 and min(p) >= 0 for p in grid)
    assert (1.0, 1.0, 1.0) in simplex_grid(3, 6)  # equal weighting is on the grid
    with pytest.raises(ValueError, match="2 or more tasks"):
        simplex_grid(1, 4)


def test_pareto_and_beyond_front_by_hand():
    points = np.array([[0.1, 0.9], [0.5, 0.5], [0.4, 0.4], [0.9, 0.1], [0.2, 0.2]])
    assert _pareto(points).tolist() == [0, 1, 3]
    frame = pd.DataFrame({"test/a": points[:, 0], "test/b": points[:, 1]})
    assert beyond_front(frame, ["a", "b"], {"test/a": 0.6, "test/b": 0.45})
    assert not beyond_front(frame, ["a", "b"], {"test/a": 0.45, "test/b": 0.45})
    # lower is better (an error): the mirror image
    assert _pareto(-points, greater=False).tolist() == [0, 1, 3]
    assert beyond_front(-frame, ["a", "b"], {"test/a": -0.6, "test/b": -0.45}, greater=False)


def test_tune_minimises_an_error_metric_on_synthetic_data():
    """On a synthetic experiment the stop metric is MSE: the study minimises it, 'worst' is the
    largest task MSE, and the test metrics are against the noiseless targets."""
    experiment = SyntheticExperiment("hetero", n=400, n_tasks=2, max_epochs=3, patience=None)
    result = tune(experiment, "grid", 3, resolution=2, prune=False, combine="worst")
    assert result.study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in result.study.trials]
    assert result.stop_score == pytest.approx(min(values))
    for trial in result.study.trials:
        worst = max(trial.user_attrs["stop/task0"], trial.user_attrs["stop/task1"])
        assert trial.value == pytest.approx(worst)
    assert set(result.test_metrics) == {"task0", "task1"}


def test_adult_education_data_hierarchy_and_inputs():
    data_dir = shared_data("adult")
    frame = read_census(data_dir / "adult.test")
    assert not frame["Y"].str.endswith(".").any()
    experiment = small_adult(data_dir)
    train, stop, test = experiment.data(seed=3)
    assert (len(train), len(stop), len(test)) == (300, 300, 300)
    fine, coarse = train.targets["education"].numpy(), train.targets["level"].numpy()
    assert set(np.unique(fine)) <= set(range(16))
    assert all(EDUCATION_TO_LEVEL[int(f)] == int(c) for f, c in zip(fine, coarse, strict=True))
    # education columns are not inputs: no input column follows education-num
    x = train.x.numpy()
    varying = [j for j in range(x.shape[1]) if x[:, j].std() > 0]
    assert max(abs(np.corrcoef(x[:, j], fine)[0, 1]) for j in varying) < 0.9
    assert experiment.data(seed=3)[0].x.numpy().tobytes() == x.tobytes()  # reproducible


def test_sentiment_domains_targets_agree():
    data_dir = shared_data("sentiment_labelled_sentences")
    experiment = SentimentDomainsExperiment(str(data_dir))
    train, _, _ = experiment.data(seed=0)
    site, sentiment, joint = (train.targets[t].numpy() for t in ("site", "sentiment", "joint"))
    assert np.array_equal(joint, 2 * site + sentiment)
    assert len(train) == 1800 and set(np.unique(site)) == {0, 1, 2}
    with pytest.raises(ValueError, match="a weight search needs at least 2 trials"):
        SentimentDomainsExperiment(str(data_dir), methods=("weighted", "tuned"), tune_trials=1)
    with pytest.raises(ValueError, match="unknown methods"):
        SentimentDomainsExperiment(str(data_dir), methods=("weighted", "magic"))
    # bad weights are refused when the experiment is made, not after its first fit
    with pytest.raises(ValueError, match=r"sentiment-domains: Weighted: every weight is 0"):
        SentimentDomainsExperiment(str(data_dir), weights=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"must be finite and non-negative, got \[1.0, nan, 1.0\]"):
        SentimentDomainsExperiment(str(data_dir), weights=(1.0, float("nan"), 1.0))


def test_adult_education_has_single_task_and_scikit_learn_baselines():
    """The single-task networks and the scikit-learn references run on the same split; a
    reference's metrics are scikit-learn's own accuracy and macro F1 of its predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    methods = ("mean", "single-task", "logistic-regression")
    experiment = small_adult(shared_data("adult"), methods=methods, max_epochs=1)
    outcome = experiment.run(0, quiet=True)
    assert set(outcome.metrics) == set(methods)
    assert set(outcome.histories) == {"mean", "single-task-education", "single-task-level"}
    for per_task in outcome.metrics.values():
        assert set(per_task) == {"education", "level"}
    train, _, test = experiment.data(0)
    for task, size in (("education", 16), ("level", 4)):
        fitted = LogisticRegression(max_iter=2000).fit(train.x.numpy(), train.targets[task])
        predicted = fitted.predict(test.x.numpy())
        got = outcome.metrics["logistic-regression"][task]
        y = test.targets[task].numpy()
        assert got["accuracy"] == pytest.approx(accuracy_score(y, predicted))
        # macro over every class of the task (a class never predicted counts 0), as for nets
        expected = f1_score(y, predicted, average="macro", labels=range(size), zero_division=0)
        assert got["macro_f1"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="is a baseline"):
        experiment.objective("single-task")


def test_structured_experiments_run_and_compare_from_the_cli(tmp_path, capsys):
    adult = shared_data("adult")
    out = tmp_path / "run"
    args = ["--data-dir", str(adult), "--max-epochs", "2", "--quiet", "--out", str(out)]
    assert main(["run", "adult-education", *args]) == 0
    table = pd.read_csv(out / "results.csv")
    assert set(table["method"]) == {"mean", "hierarchical"}
    assert table["macro_f1"].between(0, 1).all()
    history = pd.read_csv(out / "history_hierarchical.csv")
    assert "term/hierarchical" in history and "stop_term/hierarchical" in history
    compare = tmp_path / "compare"
    code = main(["compare", "adult-education", "--replications", "2", *args[:-1], str(compare)])
    assert code == 0
    report = (compare / "report.md").read_text()
    assert "macro_f1" in report and "hierarchical" in report


def test_an_empty_or_foreign_adult_file_is_named(tmp_path):
    """adult-education reads its files as the census data set does: a malformed one is refused
    naming the file and line, by the data set's check and by the experiment's data."""
    spec = dataset("adult-education")
    empty = tmp_path / "adult.data"
    empty.write_text("")
    with pytest.raises(DataFormatError, match=r"adult\.data, line 1: empty file"):
        spec.check(tmp_path)
    empty.write_text("a,b\n1,2\n")
    with pytest.raises(DataFormatError, match=r"adult\.data, line 1 \(header\): columns \['age'"):
        AdultEducationExperiment(tmp_path).data(0)


def test_a_resumed_bayes_study_continues_the_search(tmp_path, monkeypatch):
    """Eight trials asked, killed during the third, the same command again: the trials left
    in the sampler's random start-up phase draw new weights, not the first two trials' again
    (a sampler seeded as at the start re-proposes exactly those)."""
    experiment = SyntheticExperiment("hetero", n=300, n_tasks=2, max_epochs=1, patience=None)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    fit, calls = SyntheticExperiment.fit, []

    def killed_at_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(SyntheticExperiment, "fit", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        tune(experiment, "bayes", 8, storage=storage, prune=False)
    monkeypatch.setattr(SyntheticExperiment, "fit", fit)
    result = tune(experiment, "bayes", 8, storage=storage, prune=False)
    weights = [tuple(t.user_attrs["weights"]) for t in result.study.trials if t.user_attrs]
    assert len(weights) >= 8 and len(calls) == 3
    assert not set(weights[2:]) & set(weights[:2]), weights


RESUME_PAST_A_SILENT_TRIAL = """
import optuna
from polytask.experiments import SyntheticExperiment, tune
experiment = SyntheticExperiment("hetero", n=300, n_tasks=2, max_epochs=1, patience=None)
first = tune(experiment, "bayes", 3, storage={storage!r}, prune=False, heartbeat=1)
# a trial whose process died before its first heartbeat: RUNNING, with no heartbeat at all
optuna.load_study(study_name=first.study.study_name, storage={storage!r}).ask()
result = tune(experiment, "bayes", 4, storage={storage!r}, prune=False, heartbeat=1)
states = [t.state.name for t in result.study.trials]
print(states.count("COMPLETE"), states[3])
"""


def test_a_resumed_study_frees_a_trial_that_never_sent_a_heartbeat(tmp_path):
    """Optuna finds a trial stale only from its heartbeats: one killed before its first never
    expired, and a resumed study waited for it forever (seen when a kill came right after a
    trial started). Resumed, it now gives such a trial one beat, fails it after the grace
    period and runs its point again."""
    code = RESUME_PAST_A_SILENT_TRIAL.format(storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["4", "FAIL"]  # four complete; the silent trial failed


def test_tune_selects_on_the_stop_set_and_tests_once(tmp_path):
    experiment = small_adult(shared_data("adult"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = tune(experiment, "grid", 7, storage=storage, resolution=6, prune=False)
    frame = result.front()
    assert len(frame) == 7
    best = frame.loc[frame["score"].idxmax()]
    assert result.stop_score == pytest.approx(best["score"])
    assert list(result.weights.values()) == pytest.approx(list(best["weights"]))
    # the selection used the stop set: the score is the mean stop metric, never the test one
    assert best["score"] == pytest.approx(np.mean([best["stop/education"], best["stop/level"]]))
    path = plot_front(frame, ["education", "level"], "macro_f1", tmp_path / "front.png")
    assert path.stat().st_size > 10_000
    bayes = tune(experiment, "bayes", 3, storage=storage, prune=True, combine="worst")
    assert len(bayes.study.trials) == 3
    for trial in bayes.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        worst = min(trial.user_attrs["stop/education"], trial.user_attrs["stop/level"])
        assert trial.value == pytest.approx(worst)
    sums = [sum(t.user_attrs["weights"]) for t in bayes.study.trials if t.user_attrs]
    assert sums and all(abs(total - 2) < 1e-9 for total in sums)


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from test_structured import small_adult
from polytask.experiments import tune
tune(small_adult({data!r}, max_epochs=40, patience=40), "grid", 7, storage={storage!r},
     resolution=6, prune=False, heartbeat=1)
"""


def test_a_study_resumed_after_a_kill_keeps_its_finished_trials(tmp_path):
    data_dir = shared_data("adult")
    db = tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    code = KILLED_RUN.format(tests=os.path.dirname(__file__), data=str(data_dir), storage=storage)
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)

    def finished():
        if not db.exists():
            return []
        with sqlite3.connect(db) as connection:
            try:
                rows = connection.execute(
                    "SELECT trial_id, state FROM trials WHERE state = 'COMPLETE'"
                ).fetchall()
            except sqlite3.OperationalError:  # tables not created yet
                return []
        return rows

    deadline = time.time() + 240
    while len(finished()) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = finished()
    assert 2 <= len(before) < 7, "the run should be killed part-way"
    time.sleep(2.5)  # past the heartbeat grace period: the killed trial is stale
    experiment = small_adult(data_dir, max_epochs=40, patience=40)
    result = tune(experiment, "grid", 7, storage=storage, resolution=6, prune=False, heartbeat=1)
    complete = result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert {row[0] for row in before} <= {t._trial_id for t in complete}
    points = {tuple(t.user_attrs["weights"]) for t in complete}
    assert points == set(simplex_grid(2, 6))  # every grid point, the killed one included


def test_tune_command_writes_the_front_and_places_methods(tmp_path, capsys):
    adult = shared_data("adult")
    out = tmp_path / "tune"
    code = main(
        [
            "tune",
            "adult-education",
            "--data-dir",
            str(adult),
            "--resolution",
            "2",
            "--max-epochs",
            "2",
            "--place",
            "hierarchical",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3  # the grid (0, 2), (1, 1), (2, 0)
    report = (out / "report.md").read_text()
    assert "Selected on the stop set" in report and "hierarchical: test" in report
    assert (out / "front.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    weights = [float(w) for w in printed.split("--weights ")[1].split()[0].split(",")]
    assert sum(weights) == pytest.approx(2.0)


def test_tuned_without_weights_searches_each_replications_own_stop_set():
    """The nested search: the tuned method's test scores are those of tune_on_stop_set on the
    same replication's split (that it never reads test rows to choose: tests/test_suite.py)."""
    from polytask.experiments._tune import tune_on_stop_set

    data_dir = shared_data("sentiment_labelled_sentences")
    experiment = SentimentDomainsExperiment(
        str(data_dir), methods=("weighted", "tuned"), max_epochs=2, tune_trials=4, device="cpu"
    )
    outcome = experiment.run(seed=4, quiet=True)
    search = tune_on_stop_set(experiment, seed=4, trials=4)
    assert outcome.metrics["tuned"] == search.test_metrics
    assert len(search.study.trials) == 1  # 4 fits allow the grid of step 1/3: equal weights


def test_the_stop_set_search_weights_every_task():
    """The tuned baseline's grid is the inside of the simplex: a point that drops a task is no
    static weighting of the multi-task problem (on the grid of step 1/3 over three tasks, equal
    weights were the only point that kept all three, so the search always returned them)."""
    from polytask.experiments._tune import search_resolution

    for n_tasks, trials, points in ((2, 10, 9), (3, 10, 10), (3, 28, 28)):
        grid = simplex_grid(n_tasks, search_resolution(n_tasks, trials), interior=True)
        assert len(grid) == points and all(min(point) > 0 for point in grid)
        assert tuple([1.0] * n_tasks) in grid
        assert all(sum(point) == pytest.approx(n_tasks) for point in grid)
    with pytest.raises(ValueError, match="no point inside the simplex"):
        simplex_grid(3, 2, interior=True)
